"""Ray job entrypoint for bulk generation through the mixed policy.

ray job submit --working-dir . -- \
    python workflows/generate.py workflows/configs/tiny.yaml [--output URI] [--weights URI]
"""

import sys

from mpo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
