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
    assert len(calls) == 2 and calls[1] == {"num_cpus": 1}

    def broken_init(**kwargs):
        raise ValueError("bad argument")

    monkeypatch.setattr(ray, "init", broken_init)
    with pytest.raises(ValueError, match="bad argument"):
        runtime.init_local_ray(num_cpus=1)
