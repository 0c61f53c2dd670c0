"""A local cluster's workers know their own cluster, also beside another Ray cluster on the machine."""

from __future__ import annotations

import subprocess
import sys

import pytest
import ray

from libra_ray.runtime import init_local_ray

pytestmark = pytest.mark.e2e


def test_workers_find_their_own_cluster_beside_another_one(monkeypatch):
    """Ray Train's PlacementGroupCleaner asks the State API about its controller every second and finds the
    cluster as `ray.util.state` does without an address: RAY_ADDRESS, else the GCS processes on the machine.
    With another Ray cluster on the machine that raised `ConnectionError: Found multiple active Ray
    instances` in the cleaner's thread: a traceback in the run's output (and no clean-up any more). From a
    task of a local cluster started beside another one, that lookup now finds this cluster's GCS.
    Measured 2026-12-04 on the 2-core VM: 15 s; without RAY_ADDRESS in the workers it fails (seen)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    other = subprocess.Popen([sys.executable, "-c", "import ray, sys; ray.init(num_cpus=1, include_dashboard=False); "
                              "print('up', flush=True); sys.stdin.read(); ray.shutdown()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "up"
        init_local_ray(num_cpus=1, include_dashboard=False)
        try:
            @ray.remote(num_cpus=0)
            def cluster_seen_from_a_worker():  # what the State API client does without an address
                from ray._private.services import canonicalize_bootstrap_address_or_die

                return canonicalize_bootstrap_address_or_die(None)

            ours = ray.get_runtime_context().gcs_address
            assert ray.get(cluster_seen_from_a_worker.remote(), timeout=120) == ours
        finally:
            ray.shutdown()
    finally:
        other.stdin.close()
        other.wait(timeout=60)
