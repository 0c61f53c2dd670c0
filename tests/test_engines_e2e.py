"""Shared engines, heavy half (e2e): vLLM bench vs vLLM serve token for token, vLLM per-request seeds, and
mixed concurrent batches against the real Serve app over HTTP (bad requests are 400s for themselves only)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from libra_ray.testing import CACHE

pytestmark = pytest.mark.e2e

PROMPTS = ["hi", "Tell me about aspirin.", "What is the boiling point of water?", "List three solvents."]


def test_vllm_bench_and_serve_agree_and_keep_per_request_seeds(tiny_model_path, tmp_path):
    """In a subprocess (vLLM's spawn guard): bench's offline-LLM callable vs serve's AsyncLLM engine."""
    import vllm  # noqa: F401  (the cpu/gpu extra: without vLLM this fails, never skips)
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, json
        if __name__ == "__main__":
            import pyarrow as pa
            from libra_ray.bench.engines import VLLMEngine as BenchEngine
            from libra_ray.engines import GenParams
            from libra_ray.engines.vllm_engine import VLLMEngine
            prompts = {PROMPTS!r}
            bench = BenchEngine({str(tiny_model_path)!r}, max_model_len=256, max_tokens=12, temperature=0.0, seed=0)
            rows = bench(pa.table({{"id": [str(i) for i in range(len(prompts))], "prompt": prompts}})).to_pylist()
            ids = [bench.engine.chat_ids(p) for p in prompts]
            bench_ids = [r["token_ids"] for r in bench.engine.generate_batch(ids, [bench.params] * len(ids))]
            a, b = GenParams(max_tokens=16, temperature=1.5, seed=1), GenParams(max_tokens=16, temperature=1.5, seed=2)
            mixed = bench.engine.generate_batch([ids[1], ids[1], ids[2], ids[0]], [a, b, GenParams(seed=10**30), bench.params])
            solo = [bench.engine.generate_batch([ids[1]], [p])[0]["token_ids"] for p in (a, b)]
            bench.engine.shutdown()
            del bench
            serve = VLLMEngine({str(tiny_model_path)!r}, max_model_len=256, mode="async")
            async def run():
                return await asyncio.gather(*(serve.generate(t, GenParams(max_tokens=12, temperature=0.0)) for t in ids))
            served = asyncio.run(run())
            print("RESULT " + json.dumps(dict(
                bench_text=[r["raw_text"] for r in rows], bench_ids=bench_ids,
                serve_text=[r["text"] for r in served], serve_ids=[r["token_ids"] for r in served],
                mixed_ids=[m.get("token_ids") for m in mixed], mixed_error=mixed[2].get("error"), solo=solo)))
            serve.shutdown()
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][0][7:])
    assert res["bench_text"] == res["serve_text"] and res["bench_ids"] == res["serve_ids"]
    assert all(res["bench_ids"])
    assert res["mixed_ids"][:2] == res["solo"] and res["solo"][0] != res["solo"][1]
    assert res["mixed_error"]["param"] == "seed" and res["mixed_ids"][3] == res["bench_ids"][0]


@pytest.fixture(scope="module")
def app(ray_local, tmp_path_factory):
    from libra_ray.config import load_config
    from libra_ray.serve import serving

    cfg = load_config(None, [
        f"storage={tmp_path_factory.mktemp('runs')}", f"cache_dir={CACHE}", "serve.policy.path=tiny",
        "serve.port=0", "serve.policy.num_cpus=0.25", "serve.judge.num_cpus=0.25", "serve.policy.max_tokens_limit=64",
    ])
    with serving(cfg) as running:
        yield running


def _chat(app, prompt, **params):
    body = {"model": "policy", "messages": [{"role": "user", "content": prompt}], "max_tokens": 12, **params}
    return httpx.post(app.base_url + "/chat/completions", json=body, timeout=120)


def test_mixed_concurrent_batches_on_the_serve_app(app):
    good = [dict(prompt=p, temperature=0) for p in PROMPTS] + [
        dict(prompt=PROMPTS[1], temperature=1.5, seed=1), dict(prompt=PROMPTS[1], temperature=1.5, seed=2)]
    bad = [dict(prompt="hi", seed=10**30), dict(prompt="hi", max_tokens=True), dict(prompt="hi", temperature=True),
           dict(prompt="hi", seed=-(2**64))]
    solo = [_chat(app, **g).json()["choices"][0]["message"]["content"] for g in good]
    assert solo[-1] != solo[-2]  # different seeds, different samples
    for _ in range(3):  # several rounds of 32 concurrent requests, bad ones interleaved with good ones
        reqs = (good + bad) * 3
        with ThreadPoolExecutor(32) as pool:
            resps = list(pool.map(lambda kw: _chat(app, **kw), reqs))
        for kw, resp in zip(reqs, resps):
            if kw in bad:
                assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error", resp.text
            else:
                assert resp.status_code == 200, resp.text
                assert resp.json()["choices"][0]["message"]["content"] == solo[good.index(kw)]
