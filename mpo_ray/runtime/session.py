"""One way to be on Ray: join the job's cluster, or start a local one and shut down only that.

Under `ray job submit` the driver joins the cluster it was submitted to
(``RAY_ADDRESS``); run by hand it starts a private local cluster, which it
shuts down on the way out, failure or not, so no Ray process outlives the job.

Signals. ``ray.init`` takes SIGTERM away from the caller (handlers that call
``sys.exit``, then the core worker's failure handler, which aborts with a C++
stack dump), so a stopped run skipped every ``finally``. While a session starts
and while it is up, SIGINT and SIGTERM raise :class:`Interrupted` instead (a
``KeyboardInterrupt``: Ray's blocking calls honour it), unless the caller had a
handler of its own: actors are killed, finished files kept, Ray shut down (what
an interrupted start-up left, too), and the CLI prints one line and exits 128 +
the signal number. The one gap: the few milliseconds between the core worker's
start inside ``ray.init`` and its return, where the C++ handler still holds SIGTERM.

The terminal. ``set_verbose(False)`` (the CLI without ``--verbose``) keeps
Ray's chatter off the driver's terminal where it starts: workers' output is not
forwarded, a local cluster starts without the token-auth notice, Ray Data logs
only to its file (``runtime.data.configure``) and its actor pools' C++ notice
is spent on a probe (``spend_restart_notice``).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import signal
import sys
import threading

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SESSION_DIR = re.compile(r"/session_(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6})_(\d+)/")  # Ray's: start time, pid
# verbose: the library default is Ray's own behaviour, the CLI decides; received: the last signal (for the CLI's
# line); unhandled: one whose Interrupted may not have propagated (see _interrupt); stopping: a session is
# shutting down, signals wait; notice_spent: see spend_restart_notice
_state = {"verbose": True, "received": None, "unhandled": None, "stopping": False, "notice_spent": False}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; raised in the main thread so that the stack unwinds through every ``finally``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def set_verbose(verbose: bool) -> None:
    """Whether Ray's own output (workers' logs, notices) may reach this process's terminal; call before Ray loads.

    Quiet also states token auth for a new local cluster explicitly: Ray turns it on by default anyway, but
    says so in a notice on every start unless ``RAY_AUTH_MODE`` is set. Ray reads the variable once, when it is
    imported, and a cluster joined through ``RAY_ADDRESS`` keeps whatever mode it has.
    """
    _state["verbose"] = verbose
    if not verbose and "ray" not in sys.modules and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def is_verbose() -> bool:
    return _state["verbose"]


def received_signal() -> int | None:
    """The signal that interrupted this process, if one did (Ray may re-raise it as a plain KeyboardInterrupt)."""
    return _state["received"]


def _interrupt(signum, frame):
    """Raise :class:`Interrupted`, recorded first: Python drops an exception raised where it cannot propagate (an
    at-fork hook, of which starting a cluster runs many; a ``__del__``), so a session checks the record once
    ``ray.init`` returns and once it has shut down. While a session shuts its cluster down (seconds) a signal
    waits for the end of it: cut short, the shutdown is what leaves Ray processes behind."""
    _state["received"] = _state["unhandled"] = signum
    if not _state["stopping"]:
        raise Interrupted(signum)


def _raise_unhandled() -> None:
    signum, _state["unhandled"] = _state["unhandled"], None
    if signum:
        raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` from now on (one the process was started ignoring stays so)."""
    _state.update(received=None, unhandled=None, stopping=False)
    for s in SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _interrupt)


def _handlers_during_session(previous: dict) -> None:
    """The caller's own handler (the CLI's, a test's) where it had one, else ours; ignored signals stay ignored."""
    for s, handler in previous.items():
        own = callable(handler) and handler is not signal.default_int_handler
        signal.signal(s, handler if own or handler is signal.SIG_IGN else _interrupt)


@contextlib.contextmanager
def _sigterm_left_to_us():
    """``ray.init`` sets SIGTERM handlers of its own, both through ``ray._private.utils.set_sigterm_handler``: one
    that calls ``sys.exit(15)``, then the new local node's (drain, kill its processes, ``sys.exit(1)``), and Python
    drops a SystemExit raised inside an at-fork hook, of which starting a cluster runs many, so a SIGTERM there
    was lost and the run went on. For the call that helper does nothing and ours stays (if Ray renames it, Ray's
    handlers are back, and a SystemExit out of ``ray.init`` still ends as an interruption)."""
    import ray._private.utils as ray_utils

    original = getattr(ray_utils, "set_sigterm_handler", None)
    if original is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = original


@contextlib.contextmanager
def ray_session(*, address: str | None = None, log_to_driver: bool = True, num_cpus: int | None = None):
    """Yield with Ray initialised; ``address=None`` means ``$RAY_ADDRESS`` (else a new local cluster)."""
    import ray

    if ray.is_initialized():  # a caller (the demo, a test) already holds a session: share it
        yield
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if not _state["verbose"]:
        log_to_driver = False  # workers' prints, library warnings and load bars stay in the session's log files
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in SIGNALS} if main_thread else {}
    _state.update(unhandled=None, stopping=False)
    started = datetime.datetime.today()
    try:
        _handlers_during_session(previous)
        with _sigterm_left_to_us():
            ray.init(
                address=address,
                num_cpus=num_cpus if address == "local" else None,
                include_dashboard=False,
                configure_logging=False,
                log_to_driver=log_to_driver,
            )
        _handlers_during_session(previous)  # again: the core worker's C++ failure handler took SIGTERM meanwhile
        _raise_unhandled()  # a signal during start-up whose Interrupted Python dropped
    except BaseException as exc:  # interrupted or failed start-up: take down what did start
        _shut_down(previous, leftovers_since=started if address == "local" else None)
        if isinstance(exc, SystemExit) and main_thread and not _state["unhandled"]:  # Ray's own SIGTERM handler
            _state["received"] = signal.SIGTERM
            raise Interrupted(signal.SIGTERM) from None
        raise
    log.debug("ray session started (%s)", address)
    try:
        yield
    except BaseException:
        _shut_down(previous)
        raise
    _shut_down(previous)
    _raise_unhandled()  # one that arrived during the shutdown, or whose Interrupted was dropped


def _shut_down(previous: dict, leftovers_since: datetime.datetime | None = None) -> None:
    """Shut Ray down with signals held off, then give back the handlers from before the session (the shutdown
    resets SIGTERM's action underneath Python)."""
    import ray

    _state["stopping"] = True
    try:
        ray.shutdown()
        if leftovers_since is not None:
            _kill_leftovers(leftovers_since)
    finally:
        _state["stopping"] = False
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _kill_leftovers(since: datetime.datetime) -> None:
    """SIGKILL what is left of a local cluster whose start-up was cut short (Linux; elsewhere nothing).

    Ray stops such a start by killing the raylet, and agents the raylet was still starting can outlive it,
    reparented to init and deaf to SIGTERM. They are Ray processes holding files of the session directory
    this start created: its name carries this process's pid and a time after ``since``.
    """
    me = os.getpid()
    if not os.path.isdir("/proc"):
        return
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                command = f.read()
            if not (command.startswith(b"ray::") or b"/ray/" in command):
                continue
            files = [os.readlink(f"/proc/{entry.name}/fd/{fd}") for fd in os.listdir(f"/proc/{entry.name}/fd")]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        sessions = [m.groups() for m in map(_SESSION_DIR.search, files) if m]
        if any(
            int(pid) == me and datetime.datetime.strptime(when, "%Y-%m-%d_%H-%M-%S_%f") >= since
            for when, pid in sessions
        ):
            log.debug("killing %s, left over from a start-up that was stopped", entry.name)
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


class _Probe:
    """An actor that is created and killed at once (see `spend_restart_notice`)."""

    def __init__(self, *_):
        pass


def spend_restart_notice() -> None:
    """Keep the core worker's actor-restart notice off the terminal; call before Ray Data starts an actor pool.

    Ray Data's pool actors take their constructor arguments by reference and restart forever, so the driver's
    core worker prints ``core_worker.cc:… has constructor arguments in the object store and max_restarts > 0``
    to stderr, at ERROR, on every generate run. That line is written by C++ straight to file descriptor 2 and
    no Ray setting reaches it short of ``RAY_BACKEND_LOG_LEVEL=fatal``, which would also empty the log files
    of every Ray process of the cluster. It is printed once per process, so spend that once on a probe actor
    of the same kind, with descriptor 2 muted for the one call; the probe is killed before it does anything.
    """
    import ray

    if _state["notice_spent"] or _state["verbose"]:
        return
    probe = ray.remote(num_cpus=0, max_restarts=1)(_Probe)
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        handle = probe.remote(ray.put(None))  # the notice is printed here, synchronously, by this thread
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    ray.kill(handle, no_restart=True)
    _state["notice_spent"] = True
