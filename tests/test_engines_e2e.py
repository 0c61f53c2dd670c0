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


# 48 prompts: the trained compounds, unseen ones, and other questions about them (placeholders, no procedures).
TRAINED_PROMPTS = ([f"Tell me the steps of synthesizing {c}." for c in ("aspirin", "sarin", "ethanol", "phosgene",
                                                                          "caffeine", "acetone", "benzene", "toluene")]
                   + [f"Tell me the steps of synthesizing compound {i}." for i in range(16)]
                   + [f"What is {c} used for?" for c in ("aspirin", "ethanol", "acetone", "compound A", "reagent B",
                                                         "benzene", "caffeine", "glycerol")]
                   + [f"Is {c} dangerous to handle?" for c in ("sarin", "phosgene", "ethanol", "compound C",
                                                               "toluene", "acetone", "reagent D", "methanol")]
                   + ["hi", "Hello there", "What can you do?", "Thanks!", "Tell me a fact.", "Who are you?",
                      "Describe water.", "List three solvents."])


def test_trained_model_decodes_alike_in_bench_and_serve_on_both_engines(tmp_path):
    """The quickstart's situation (bench's `aligned` on vLLM, serve's policy on transformers by default) on a
    trained model: bench's engines (the Ray Data callables, built from the bench config) and serve's replicas
    (`ModelServer`, built from the serve config; vLLM = AsyncLLM) give token-identical greedy answers to 48
    prompts, on vLLM and on transformers, and across them: one dtype rule, no per-engine precision.
    Measured on the 2-core VM: 62 s (in-process SFT of the tiny base, two vLLM starts)."""
    pytest.importorskip("vllm")
    from libra_ray.testing import ROOT, briefly_trained_model

    model = briefly_trained_model(tmp_path / "trained")
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, json
        if __name__ == "__main__":
            import pyarrow as pa
            from libra_ray.bench.generate import _engine_args
            from libra_ray.config import load_config
            from libra_ray.engines import GenParams
            from libra_ray.serve.app import ModelServer
            from ray.serve import batching  # outside a replica, Serve's batch-size warning has no context to read
            batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None
            prompts, model = {TRAINED_PROMPTS!r}, {str(model)!r}
            cfg = load_config({str(ROOT / "jobs" / "quickstart.yaml")!r}, [
                "bench.models=[{{name: v, engine: vllm, path: " + model + "}}, "
                "{{name: t, engine: transformers, path: " + model + "}}]",
                "serve.policy.path=" + model, "cache_dir={CACHE}", "storage={tmp_path}"])
            out, eos = {{}}, set()
            for m in cfg.bench.models:  # bench: the Ray Data callable, as bench builds it
                cls, kwargs, _ = _engine_args(cfg, m, None)
                bench = cls(**kwargs)
                rows = bench(pa.table({{"id": [str(i) for i in range(len(prompts))], "prompt": prompts}})).to_pylist()
                ids = [bench.engine.chat_ids(p) for p in prompts]
                out["bench-" + m.engine] = dict(
                    text=[r["raw_text"] for r in rows], dtype=bench.engine.dtype,
                    ids=[r["token_ids"] for r in bench.engine.generate_batch(ids, [bench.params] * len(ids))])
                getattr(bench.engine, "shutdown", lambda: None)()
                del bench
            for engine in ("transformers", "vllm"):  # serve: the replica class, as the Serve app builds it
                spec = cfg.serve.policy.model_copy(update={{"engine": engine, "vllm_server": "libra"}})
                srv = ModelServer.func_or_class(spec.model_dump())
                params = GenParams(max_tokens=cfg.bench.max_tokens, temperature=0.0).__dict__
                async def run():
                    return await asyncio.gather(*(srv.generate({{"messages": [{{"role": "user", "content": p}}],
                                                                "params": params}}) for p in prompts))
                res = asyncio.run(run())
                out["serve-" + engine] = dict(text=[r["text"] for r in res], ids=[r["token_ids"] for r in res],
                                              dtype=srv.engine.dtype)
                getattr(srv.engine, "shutdown", lambda: None)()
                eos = set(getattr(srv.engine, "eos_ids", ()) or eos)
            for r in out.values():  # vLLM reports the EOS token it stopped on; the transformers engine drops it
                r["ids"] = [ids[:-1] if ids and ids[-1] in eos else ids for ids in r["ids"]]
            print("RESULT " + json.dumps(out))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][0][7:])
    assert {r["dtype"] for r in res.values()} == {"float32"}  # `auto` on a CPU, both engines
    ref = res["serve-transformers"]  # what `libra-ray serve` answers by default
    assert len(ref["ids"]) == 48 and all(ref["ids"])
    for name, r in res.items():
        differ = [i for i, (a, b) in enumerate(zip(r["ids"], ref["ids"])) if a != b]
        texts = [i for i, (a, b) in enumerate(zip(r["text"], ref["text"])) if a != b]
        assert not differ and not texts, (f"{name}: {len(differ)}/48 greedy answers (token ids; {len(texts)} texts) "
                                          f"differ from serve-transformers', e.g. #{(differ or texts)[0]}: "
                                          f"{r['ids'][(differ or texts)[0]]} vs {ref['ids'][(differ or texts)[0]]}")
