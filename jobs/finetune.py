"""`ray job submit --working-dir . -- python jobs/finetune.py --config jobs/configs/train.yaml`."""

import sys

from alpagasus_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
