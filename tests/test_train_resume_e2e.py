"""`libra-ray train` killed mid-run by SIGKILL to the DRIVER (not a worker), then the same command re-run:
it resumes from the last checkpoint and ends at the same step count as an uninterrupted run.

The driver runs in its own process with its own local Ray cluster (its own RAY_TMPDIR, so every process of
that cluster is found by path and none is left behind, whatever the kill orphaned).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from libra_ray.config import load_config
from libra_ray.testing import CACHE, ROOT, pids_mentioning, saved_steps, wait_for, write_train_set

pytestmark = pytest.mark.e2e

MAX_STEPS = 12


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_driver_killed_mid_run_then_rerun_resumes(tmp_path, tiny_model_path):
    data = write_train_set(tmp_path / "data" / "train")
    overrides = [f"storage={tmp_path / 'runs'}", f"cache_dir={tiny_model_path.parent}", f"train.dataset={data}",
                 "train.max_length=96", "train.learning_rate=1e-3", f"train.max_steps={MAX_STEPS}",
                 "train.save_steps=3", "train.replicas=2", "ray.num_cpus=2"]
    cfg = load_config(None, overrides)
    ray_tmp = tempfile.mkdtemp(prefix="lrk", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
           "TORCH_EXTENSIONS_DIR": str(CACHE / "torch_extensions")}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "libra_ray.cli", "train", *[a for o in overrides for a in ("--set", o)]]
    log = open(tmp_path / "first.log", "w+")
    try:
        driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        saved_at_kill: list = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and driver.poll() is None:
            saved_at_kill = saved_steps(cfg)
            if saved_at_kill:
                driver.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        driver.wait(timeout=60)
        log.seek(0)
        assert driver.returncode == -signal.SIGKILL, log.read()[-3000:]
        # Killed mid-run: intermediate checkpoints only, the final model not yet registered.
        assert saved_at_kill and "final" not in saved_at_kill and max(saved_at_kill) < MAX_STEPS, saved_at_kill
        assert not os.path.exists(os.path.join(cfg.model_dir, "libra_ray_train.json"))
        # Whatever the kill left of that cluster (GCS, raylet, agents, workers), once no process appears or
        # exits any more (polled: an event, not a fixed pause).
        seen: list[set] = []

        def settled() -> bool:  # the same processes at two polls in a row
            seen.append(set(pids_mentioning(ray_tmp)))
            return len(seen) >= 2 and seen[-1] == seen[-2]

        wait_for(settled, 60, "the killed run's processes to settle", step=0.5)
        orphans = sorted(seen[-1])
        _kill_all(orphans)

        again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        summary = json.load(open(os.path.join(cfg.model_dir, "libra_ray_train.json")))["summary"]
        assert summary["steps"] == MAX_STEPS  # the same step count as an uninterrupted run
        assert summary["resumed_from_step"] >= max(saved_at_kill) and summary["resumed_from_step"] < MAX_STEPS, summary
        assert summary["resumed_from_step"] % 3 == 0  # a checkpoint step (save_steps=3)
        assert summary["steps_this_attempt"] == MAX_STEPS - summary["resumed_from_step"], summary
        assert "resuming from checkpoint at step" in again.stdout + again.stderr
        assert summary["final_loss"] < summary["first_loss"]
        print(f"orphans of the killed driver: {len(orphans)}; resumed from step {summary['resumed_from_step']}")
    finally:
        log.close()
        _kill_all(pids_mentioning(ray_tmp))
