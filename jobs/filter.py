"""`ray job submit --working-dir . -- python jobs/filter.py --config jobs/configs/local.yaml`."""

import sys

from alpagasus_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["filter", *sys.argv[1:]]))
