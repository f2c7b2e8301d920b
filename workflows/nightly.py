"""Ray job entrypoint for the nightly reweighting (a KubeRay CronJob in production: cluster/nightly-cronjob.yaml).

    ray job submit --working-dir . -- python workflows/nightly.py workflows/configs/tiny.yaml --night 2025-06-01

Exit status: 0 promoted, 2 bad input, 3 gate failed (old weights kept), 4 store busy; see `mpo-ray nightly --help`.
"""

import sys

from mpo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
