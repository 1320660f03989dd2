"""The paper's experiment on your data: filter, train on the kept rows and on all rows, judge
the two pairwise, as one job:

ray job submit --working-dir . -- python jobs/experiment.py --config jobs/configs/experiment.yaml
"""

import sys

from alpagasus_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
