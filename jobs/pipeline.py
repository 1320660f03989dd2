"""Filter, then fine-tune on the kept rows, as the paper does:

ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/pipeline.yaml
"""

import sys

from alpagasus_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
