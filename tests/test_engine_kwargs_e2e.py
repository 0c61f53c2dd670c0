"""engine_kwargs reach vLLM (e2e): bench's offline engine and serve's AsyncLLM engine are built with the
user's extra vLLM arguments merged over ours, and still generate."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.e2e


def test_engine_kwargs_reach_vllm_in_bench_and_serve(tiny_model_path, tmp_path):
    import vllm  # noqa: F401  (the cpu/gpu extra: without vLLM this fails, never skips)
    script = tmp_path / "check.py"
    # max_model_len overrides ours (256); max_num_seqs and disable_log_stats are not set by us otherwise.
    script.write_text(textwrap.dedent(f"""
        import asyncio, json
        if __name__ == "__main__":
            from libra_ray.bench.engines import VLLMEngine as BenchEngine
            from libra_ray.engines import GenParams
            from libra_ray.engines.vllm_engine import VLLMEngine
            kwargs = {{"max_num_seqs": 3, "max_model_len": 192}}
            bench = BenchEngine({str(tiny_model_path)!r}, max_model_len=256, max_tokens=8, engine_kwargs=kwargs)
            conf = bench.engine.llm.llm_engine.vllm_config
            ids = bench.engine.chat_ids("hi")
            out = bench.engine.generate_batch([ids], [bench.params])[0]
            res = dict(bench=[conf.scheduler_config.max_num_seqs, conf.model_config.max_model_len,
                              bench.engine.max_model_len, len(out["token_ids"])])
            bench.engine.shutdown()
            del bench
            serve = VLLMEngine({str(tiny_model_path)!r}, max_model_len=256, mode="async",
                               engine_kwargs=dict(kwargs, disable_log_stats=False))
            conf = serve.llm.vllm_config
            served = asyncio.run(serve.generate(ids, GenParams(max_tokens=8, temperature=0.0)))
            res["serve"] = [conf.scheduler_config.max_num_seqs, conf.model_config.max_model_len, serve.max_model_len,
                            len(served["token_ids"])]
            print("RESULT " + json.dumps(res))
            serve.shutdown()
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][0][7:])
    for engine in ("bench", "serve"):
        max_num_seqs, vllm_len, our_len, tokens = res[engine]
        assert (max_num_seqs, vllm_len, our_len) == (3, 192, 192), engine
        assert tokens > 0, engine
