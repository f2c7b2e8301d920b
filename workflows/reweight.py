"""Ray job entrypoint for reweighting.

ray job submit --working-dir . -- python workflows/reweight.py workflows/configs/tiny.yaml [--output URI]
"""

import sys

from mpo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["reweight", *sys.argv[1:]]))
