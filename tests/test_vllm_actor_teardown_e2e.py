"""A vLLM bench actor ends quietly: bench's Ray Data actor (`bench.generate`, engine vllm) on the tiny model,
in a fresh driver, then everything every process of the cluster wrote is searched for a traceback or a
resource-tracker message.

What it guards (issue 26, item 4): Ray's graceful actor exit SIGKILLed the actor's direct children (the
multiprocessing resource tracker and vLLM's EngineCore) before the actor's exit hooks ran; vLLM's worker
survived them and unregistered its shared memory with a relaunched tracker that had never seen it, which
printed `KeyError: '/psm_...'` / `'/loky-...'` tracebacks (and EngineCore's segments stayed in /dev/shm).
The fix is `engines.env.VLLM_ACTOR_RUNTIME_ENV` on the actor; without it this test fails.

Measured 2026-12-04 on the 2-core CPU VM: 44-46 s (3 runs); fails without the fix (seen: the KeyError tracebacks).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from libra_ray.testing import CACHE, ROOT

pytestmark = pytest.mark.e2e


def test_a_vllm_bench_actor_exits_without_a_traceback(tmp_path):
    import vllm  # noqa: F401  (the cpu/gpu extra: without vLLM this fails, never skips)

    tag = uuid.uuid4().hex  # marks this test's processes (vLLM's, orphaned or not) among the machine's
    script = tmp_path / "bench_vllm.py"
    script.write_text(textwrap.dedent(f"""
        import os
        if __name__ == "__main__":
            import psutil
            import ray
            from libra_ray.bench.generate import generate
            from libra_ray.config import load_config
            from libra_ray.runtime import init_local_ray
            from libra_ray.testing import wait_for, write_bench_prompts

            def ours_vllm():
                procs = []
                for p in psutil.process_iter(["cmdline"]):
                    try:
                        if "VLLM::" in " ".join(p.info["cmdline"] or []) and p.environ().get("LIBRA_TEST_TAG") == {tag!r}:
                            procs.append(p.pid)
                    except psutil.Error:
                        pass
                return procs

            prompts = write_bench_prompts({str(tmp_path / "p.parquet")!r}, 32)
            cfg = load_config(None, ["storage={tmp_path / 'runs'}", "cache_dir={CACHE}", "bench.prompts=" + prompts,
                                     "bench.max_tokens=8", "bench.max_model_len=256", "bench.batch_size=16",
                                     "bench.models=[{{name: v, engine: vllm, path: tiny}}]"])
            init_local_ray(num_cpus=2, include_dashboard=False)
            print("SESSION " + ray._private.worker._global_node.get_session_dir_path(), flush=True)
            out = generate(cfg, cfg.bench.models[0])
            assert out["generated"] == 32, out
            # Ray ends the actor after the dataset: wait until vLLM has finished exiting (what it prints then is
            # the point), not just until ray.shutdown could cut it short.
            wait_for(lambda: not ours_vllm(), 120, "vLLM's processes to exit after the actor's end")
            ray.shutdown()
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "LIBRA_TEST_TAG": tag}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=400, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    session = Path(next(ln for ln in proc.stdout.splitlines() if ln.startswith("SESSION "))[8:])
    logs = {"driver": output} | {f.name: f.read_text(errors="replace") for f in (session / "logs").glob("worker-*")}
    for name, text in logs.items():
        for needle in ("Traceback", "resource_tracker", "leaked"):
            assert needle not in text, (name, text[max(0, text.find(needle) - 1500):][:4000])
