"""The one place that starts or joins Ray. Every stage calls `ray_session(cfg)`.

Resolution order: `cfg.ray.address`, then `RAY_ADDRESS`, then an embedded local cluster. Inside a
Ray Job (or a test that already called `ray.init`) the existing connection is reused and left open.

An embedded cluster's processes (GCS, raylet, dashboard, the raylet's DashboardAgent/RuntimeEnvAgent and
workers) outlive a driver killed with SIGKILL, and `ray status` cannot see them. So every local start
records its driver and those processes in a state file (`local_session_dir()`), and the next local start
stops the processes of any recorded session whose driver is dead (`cleanup_dead_local_sessions`). Only
sessions this module started are touched, never one with a live driver, never a cluster we joined.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig

log = logging.getLogger(__name__)

# Quiet, deterministic workers: no tokenizer thread pools fighting over 2 cores, no hub calls.
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    # Ray Train reroutes print() through its logger: every line twice, plus dill's bytecode dumps.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def resolve_address(cfg: "PipelineConfig") -> str | None:
    return cfg.ray.address or os.environ.get("RAY_ADDRESS") or None


def init_local_ray(attempts: int = 3, **init_kwargs) -> None:
    """Start an embedded local Ray cluster, retrying a slow start.

    Ray gives a new raylet a fixed 30 s to register with the GCS; on a saturated small machine (CI,
    a laptop running tests) that window is sometimes missed. A retry from scratch then succeeds.
    """
    import ray

    cleanup_dead_local_sessions()
    for attempt in range(1, attempts + 1):
        try:
            port = int(os.environ.get(GCS_PORT_ENV) or 0) or free_port()  # a port the user chose wins
            with _environ(GCS_PORT_ENV, str(port)):
                ray.init(**_knowing_own_address(init_kwargs, port))
            _record_local_session()
            return
        except Exception as err:  # Ray raises a bare Exception for the registration timeout
            if "timed out during startup" not in str(err) or attempt == attempts:
                raise
            log.warning("local Ray start timed out (attempt %d/%d); retrying", attempt, attempts)
            ray.shutdown()
            _kill_orphaned_ray_children()


# Ray reads the head's GCS port from this variable (ray._private.ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE).
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"


def _knowing_own_address(init_kwargs: dict, port: int) -> dict:
    """`ray.init` arguments whose workers know their cluster: RAY_ADDRESS = this cluster's GCS, chosen
    before the start. Code in a worker that finds "its" cluster by looking for GCS processes on the
    machine (Ray Train's PlacementGroupCleaner polls the State API that way every second) otherwise fails
    with `ConnectionError: Found multiple active Ray instances` (a traceback) as soon as another Ray
    cluster runs on the same machine, or reaches the one a `ray start` recorded. A RAY_ADDRESS the
    caller's runtime_env sets wins."""
    runtime_env = dict(init_kwargs.get("runtime_env") or {})
    runtime_env["env_vars"] = {"RAY_ADDRESS": f"127.0.0.1:{port}", **(runtime_env.get("env_vars") or {})}
    return {**init_kwargs, "runtime_env": runtime_env}


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _environ(key: str, value: str) -> Iterator[None]:
    """`key=value` in this process's environment for the block (what Ray's node start reads), then as before."""
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _kill_orphaned_ray_children() -> None:
    """A failed `ray.init` leaves its GCS/raylet children running without a handle: stop them."""
    import psutil

    def is_ray(proc: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return "ray" in " ".join(proc.cmdline())
        return False

    _terminate([p for p in psutil.Process().children(recursive=True) if is_ray(p)], grace_s=10)


def _terminate(procs: list, grace_s: float) -> None:
    """SIGTERM, then SIGKILL for what is still alive after `grace_s`."""
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


# ---- processes of a killed driver's local cluster ---------------------------------------------------
def local_session_dir() -> str:
    """Where local starts record their sessions (one JSON file per driver pid); per user, on this machine."""
    root = os.environ.get("LIBRA_RAY_SESSION_STATE_DIR") or os.path.join(
        tempfile.gettempdir(), f"libra_ray-{os.getuid()}", "local_ray_sessions")
    return root


def _proc_id(proc) -> list:
    """(pid, start time): a pid alone may have been reused by an unrelated process since."""
    return [proc.pid, proc.create_time()]


def _record_local_session() -> None:
    """Write this driver's and its new local cluster's processes (all descendants: GCS, raylet and the
    raylet's agents) to the state file, so a later start can stop them if this driver is killed."""
    import psutil
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:  # not a real start (a test's stand-in for ray.init)
        return
    me, session_dir = psutil.Process(), node.get_session_dir_path()
    procs: dict[int, list] = {}
    for child in me.children(recursive=False):
        with contextlib.suppress(psutil.Error):
            if session_dir in " ".join(child.cmdline()):  # this cluster's GCS, raylet, dashboard, monitors
                for proc in [child, *child.children(recursive=True)]:  # and the raylet's agents and workers
                    procs[proc.pid] = _proc_id(proc)
    state = {"driver": _proc_id(me), "session_dir": session_dir, "processes": list(procs.values())}
    os.makedirs(local_session_dir(), exist_ok=True)
    path = os.path.join(local_session_dir(), f"{me.pid}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)


def _forget_local_session() -> None:
    with contextlib.suppress(OSError):
        os.remove(os.path.join(local_session_dir(), f"{os.getpid()}.json"))


def _alive(pid: int, create_time: float):
    """The process if `pid` still runs the same process (same start time), else None."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def session_leftovers(state: dict) -> list:
    """The still-running processes of a recorded session: the recorded ones (pid and start time match),
    their descendants (workers and agents started later), and any whose command line names the session dir."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for pid, created in state.get("processes", []):
        proc = _alive(pid, created)
        if proc is None:
            continue
        found[proc.pid] = proc
        with contextlib.suppress(psutil.Error):
            found.update({c.pid: c for c in proc.children(recursive=True)})
    session_dir = state.get("session_dir")
    if session_dir:
        for proc in psutil.process_iter(["cmdline"]):
            if session_dir in " ".join(proc.info.get("cmdline") or []):
                found.setdefault(proc.pid, proc)
    found.pop(os.getpid(), None)
    return list(found.values())


def cleanup_dead_local_sessions() -> list[int]:
    """Stop the leftover processes of every recorded local session whose driver is dead (SIGTERM, then
    SIGKILL after 5 s) and drop its state file; sessions of live drivers are left alone. Returns the
    pids stopped. Cheap when there is nothing to do (one directory listing)."""
    folder = local_session_dir()
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".json")]
    except FileNotFoundError:
        return []
    stopped: list[int] = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                state = json.load(f)
            driver_pid, driver_created = state["driver"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours
        if _alive(driver_pid, driver_created) is not None:
            continue
        leftovers = session_leftovers(state)
        if leftovers:
            log.warning("stopping %d leftover Ray processes of a killed driver (pid %s, %s)", len(leftovers),
                        driver_pid, state.get("session_dir"))
        _terminate(leftovers, grace_s=5)
        stopped += [p.pid for p in leftovers]
        with contextlib.suppress(OSError):
            os.remove(path)
    return stopped


@contextlib.contextmanager
def ray_session(cfg: "PipelineConfig") -> Iterator[None]:
    """Connect to Ray for the duration of a stage; shut down only what this call started."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = resolve_address(cfg)
    env_vars = {**WORKER_ENV, **cfg.ray.runtime_env.get("env_vars", {})}
    # The working tree must ship to remote nodes only when joining a cluster from outside a job.
    runtime_env = {**cfg.ray.runtime_env, "env_vars": env_vars}
    kwargs: dict = {"namespace": cfg.ray.namespace, "runtime_env": runtime_env, "log_to_driver": True}
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        init_local_ray(
            num_cpus=cfg.ray.num_cpus,
            num_gpus=cfg.ray.num_gpus,
            include_dashboard=cfg.ray.include_dashboard,
            **kwargs,
        )
    try:
        yield
    finally:
        ray.shutdown()
        if not address:
            _forget_local_session()
