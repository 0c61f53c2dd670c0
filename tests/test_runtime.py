import pytest
import ray

from libra_ray.config import load_config
from libra_ray.runtime import ray_session, resolve_address


def test_starts_local_cluster_and_shuts_it_down(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(None, ["ray.num_cpus=1"])
    assert not ray.is_initialized()
    with ray_session(cfg):
        assert ray.is_initialized()
        assert ray.cluster_resources()["CPU"] == 1
        assert ray.get(ray.remote(lambda: __import__("os").environ["HF_HUB_OFFLINE"]).remote()) == "1"
    assert not ray.is_initialized()


def test_reuses_existing_connection_and_leaves_it_open(ray_local):
    with ray_session(load_config()):
        assert ray.is_initialized()
    assert ray.is_initialized()


def test_address_resolution(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert resolve_address(load_config()) == "ray://head:10001"
    assert resolve_address(load_config(None, ["ray.address=auto"])) == "auto"


def test_local_start_retries_only_the_registration_timeout(monkeypatch):
    import ray

    from libra_ray import runtime

    calls: list[dict] = []

    def flaky_init(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise Exception("The current node timed out during startup. This could happen ...")

    monkeypatch.setattr(ray, "init", flaky_init)
    monkeypatch.setattr(runtime, "_kill_orphaned_ray_children", lambda: None)
    runtime.init_local_ray(num_cpus=1)
    assert len(calls) == 2 and calls[1]["num_cpus"] == 1
    # Each attempt pins its own GCS port and tells the workers (RAY_ADDRESS): see the e2e test below.
    assert calls[1]["runtime_env"]["env_vars"]["RAY_ADDRESS"].startswith("127.0.0.1:")

    def broken_init(**kwargs):
        raise ValueError("bad argument")

    monkeypatch.setattr(ray, "init", broken_init)
    with pytest.raises(ValueError, match="bad argument"):
        runtime.init_local_ray(num_cpus=1)


def _sleeper():
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_next_local_start_stops_only_the_leftovers_of_dead_drivers(monkeypatch, tmp_path):
    """A killed driver's recorded processes are stopped; a live driver's session, and a pid whose start time
    no longer matches (reused by an unrelated process), are left alone."""
    import json

    import psutil

    from libra_ray import runtime

    monkeypatch.setenv("LIBRA_RAY_SESSION_STATE_DIR", str(tmp_path))
    dead_driver, live_driver, leftover, live_child, unrelated = (_sleeper() for _ in range(5))
    dead_driver.kill()
    dead_driver.wait()
    ident = lambda p: [p.pid, psutil.Process(p.pid).create_time()]  # noqa: E731
    states = {
        "dead.json": {"driver": [dead_driver.pid, 1.0], "session_dir": "/nonexistent/session_x",
                      "processes": [ident(leftover), [unrelated.pid, 1.0]]},  # 1.0: a reused pid's old start
        "live.json": {"driver": ident(live_driver), "session_dir": "/nonexistent/session_y",
                      "processes": [ident(live_child)]},
    }
    for name, state in states.items():
        (tmp_path / name).write_text(json.dumps(state))
    try:
        assert runtime.cleanup_dead_local_sessions() == [leftover.pid]
        assert leftover.wait(timeout=10) is not None
        assert live_child.poll() is None and unrelated.poll() is None and live_driver.poll() is None
        assert sorted(p.name for p in tmp_path.iterdir()) == ["live.json"]
        assert runtime.cleanup_dead_local_sessions() == []  # nothing more to do
    finally:
        for p in (live_driver, leftover, live_child, unrelated):
            p.kill()
            p.wait()

