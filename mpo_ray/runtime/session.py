"""One way to be on Ray: join the job's cluster, or start a local one and shut down only that.

Under `ray job submit` the driver joins the cluster it was submitted to
(``RAY_ADDRESS``); run by hand it starts a private local cluster, which it
shuts down on the way out, failure or not, so no Ray process outlives the job.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_session(*, address: str | None = None, log_to_driver: bool = True, num_cpus: int | None = None):
    """Yield with Ray initialised; ``address=None`` means ``$RAY_ADDRESS`` (else a new local cluster)."""
    import ray

    if ray.is_initialized():  # a caller (the demo, a test) already holds a session: share it
        yield
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, num_cpus=num_cpus if address == "local" else None, include_dashboard=False,
             configure_logging=False, log_to_driver=log_to_driver)
    log.debug("ray session started (%s)", address)
    try:
        yield
    finally:
        ray.shutdown()
