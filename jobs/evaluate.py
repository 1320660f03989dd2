"""The evaluate job for `ray job submit`:

ray job submit --working-dir . -- python jobs/evaluate.py --config jobs/configs/evaluate.yaml
"""

import sys

from alpagasus_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
