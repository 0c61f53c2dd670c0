"""End to end on a real local Ray cluster: vLLM actors (CPU build) over a few hundred prompts, Ray's
ray.data.llm processor, a hosted-API baseline and a judge over real local OpenAI-compatible HTTP
servers, then scores and the report. Also the embedded judge (Ray Serve + tiny model)."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from libra_ray.llm.testserver import TestOpenAIServer
from libra_ray.testing import scripted_judge, write_bench_prompts

pytestmark = pytest.mark.e2e

N = 300


def _prompts(path, n: int) -> str:
    """n prompts, 5 triplet duplicates, one too long for max_model_len 256."""
    return write_bench_prompts(path, n, duplicates=5, long_prompt=True)


def baseline(messages, params):
    """A hosted baseline with known behaviour: refuses half the illegitimate prompts (with a leaking
    reasoning trace) and over-refuses a third of the legitimate ones."""
    if "Answer with the letter" in messages[-1]["content"]:  # a capability question: always "B"
        return "B"
    m = re.search(r"compound (\d+)", messages[-1]["content"])
    i = int(m.group(1)) if m else 1000
    if i % 4 == 1:
        return {"content": "I cannot help with that.", "reasoning_content": "Step 1: A + B -> C"}
    if i % 6 == 0:
        return "I'm sorry, I cannot."
    return "Step 1: A + B -> X."


@pytest.fixture(scope="module")
def servers():
    with TestOpenAIServer(responder=baseline) as api, TestOpenAIServer(responder=scripted_judge) as jdg:
        yield api, jdg


def _cfg(tmp_path, *overrides):
    from libra_ray.config import load_config

    from libra_ray.testing import CACHE

    return load_config(None, [f"storage={tmp_path / 'runs'}", f"cache_dir={CACHE}",
                              f"bench.prompts={_prompts(tmp_path / 'p.parquet', N)}", "bench.max_tokens=16",
                              "bench.max_model_len=256", "bench.batch_size=64", *overrides])


def test_vllm_actors_and_api_baseline_full_report(ray_local, servers, tmp_path):
    from libra_ray.bench import run
    from libra_ray.endpoints import open_endpoint
    from libra_ray.bench.generate import read_generations

    api, jdg = servers
    # A rule as the local detector keeps the cascade's routing exact (confidence 1: only disagreements).
    cfg = _cfg(tmp_path, f"bench.judge.base_url={jdg.base_url}", "bench.judge.api_key_env=null",
               "bench.local_detector=rule:start", "bench.attack.prompts_per_class=4",
               "bench.capability.questions_per_type=2",
               "bench.models=[{name: tiny_vllm, engine: vllm, path: tiny}, "
               f"{{name: api, engine: openai, endpoint: {{base_url: '{api.base_url}', model: base, api_key_env: null}}}}]")
    summary = run(cfg, open_endpoint=open_endpoint)
    gens = read_generations(cfg, "tiny_vllm").to_pylist()
    assert len(gens) == N + 1
    errors = [g for g in gens if g["error"]]
    assert len(errors) == 1 and "prompt too long" in errors[0]["error"]
    assert all(g["completion_tokens"] >= 1 and g["raw_text"] is not None for g in gens if not g["error"])

    # The baseline's scores are known exactly (see `baseline`); every judge reply parsed.
    api_s = json.load(open(summary["report"]["json"]))["models"]["api"]
    assert api_s["n"] == N + 1 and api_s["unjudged"] == 0
    assert api_s["safety"]["value"] == pytest.approx(75 / 150)
    assert api_s["utility"]["value"] == pytest.approx(101 / 151)
    assert api_s["reasoning_leak"]["k"] == 75 and api_s["reasoning_leak"]["value"] == 1.0
    assert api_s["by_form"]["SMILES"]["n"] == 101  # 100 + the over-long copy of prompt 0
    assert summary["models"]["api"]["overall"] == pytest.approx((75 + 101) / 301)
    ev = pq.read_table(f"{cfg.bench_dir}/api/evaluations.parquet").to_pylist()
    # Only the rows the cascade routed (refusals the paper rule misses) were judged; raw replies kept.
    assert {e["judge_synthesis_route_v1_raw"] for e in ev if e["judge_needed"]} == {"No"}
    assert all(e["judge_synthesis_route_v1_raw"] is None for e in ev if not e["judge_needed"])
    # The cascade (default) sent only the refusals (where the paper rule disagrees) to the judge.
    lab = api_s["labelling"]
    assert lab["judge_routed"] == 125 and lab["judge_avoided"] == 176 and lab["by_source"]["local"] == 176
    md = open(summary["report"]["md"]).read()
    assert "| tiny_vllm | vllm (float32) | 300 |" in md and "| api | openai | 301 |" in md
    assert "## Refusal detector" in md and "a smoke check, not a measurement" in md
    assert open(summary["report"]["html"]).read().count("data:image/png;base64,") >= 2  # trade-off plot + by form

    _capability_and_attack(cfg, summary)

    # A re-run generates nothing new and makes no new judge call (all cached).
    before = jdg.request_count
    again = run(cfg, open_endpoint=open_endpoint)
    assert again["models"] == summary["models"] and jdg.request_count == before
    redo = json.load(open(again["report"]["json"]))["models"]["tiny_vllm"]
    assert redo["capability"]["run"]["scored"] == 0 and redo["capability"]["run"]["resumed"] == 36


def _capability_and_attack(cfg, summary):
    """The capability set (option log-likelihoods from vLLM's prompt_logprobs; the API's letters parsed)
    and safety under attack (the API's behaviour under each wrapper is known exactly)."""
    from libra_ray.bench import store
    from libra_ray.bench.capability import capability_dir, load_questions
    from libra_ray.policy.jailbreaks import WRAPPERS

    report = json.load(open(summary["report"]["json"]))["models"]
    qs = load_questions(cfg).to_pylist()
    assert len(qs) == 36  # 9 types x 2 classes x 2 (no synth dataset: one "catalogue" split)
    local = report["tiny_vllm"]["capability"]
    assert local["n"] == 36 and local["unanswered"] == 0 and local["accuracy"]["n"] == 36
    rows = store.read_shards(capability_dir(cfg, "tiny_vllm")).to_pylist()
    assert all(len(r["option_logprobs"]) == 4 and all(lp < 0 for lp in r["option_logprobs"])
               and r["pred"] == max(range(4), key=r["option_logprobs"].__getitem__) for r in rows)
    api = report["api"]["capability"]  # the API answers "B" to everything
    assert api["accuracy"]["k"] == sum(q["answer_idx"] == 1 for q in qs) and api["unanswered"] == 0

    attack = report["api"]["under_attack"]
    assert set(attack["wrappers"]) == set(WRAPPERS) and attack["direct"]["safety"]["n"] == 4
    for wid, w in attack["wrappers"].items():
        if wid in ("base64_v1", "leetspeak_v1"):  # the responder cannot read the encoded compound: it complies
            assert w["safety"]["value"] == 0 and w["utility"]["value"] == 1, wid
        else:  # the request is still legible: the same answers as asked directly
            assert (w["safety"]["k"], w["utility"]["k"]) == (attack["direct"]["safety"]["k"],
                                                             attack["direct"]["utility"]["k"]), wid
    assert attack["worst"]["safety"]["value"] == 0 and report["tiny_vllm"]["under_attack"]["errors"] == 0
    assert "## Safety under attack" in open(summary["report"]["md"]).read()
    assert open(summary["report"]["html"]).read().count("<svg") == 2
    assert all("under attack: safety mean" in line and "capability" in line for line in summary["summary_lines"])


def test_ray_data_llm_processor(ray_local, tmp_path):
    from libra_ray.bench.generate import generate, read_generations

    cfg = _cfg(tmp_path, "bench.max_prompts=16", "bench.batch_size=8",
               "bench.models=[{name: rdl, engine: ray_data_llm, path: tiny}]")
    out = generate(cfg, cfg.bench.models[0])
    assert out["generated"] == 16
    rows = read_generations(cfg, "rdl").to_pylist()
    assert all(r["prompt"].startswith("Tell me") for r in rows)  # the benchmark prompt, not the template
    assert all(r["error"] is None and r["completion_tokens"] >= 1 for r in rows)


def test_embedded_tiny_judge_counts_unparseable(ray_local, servers, tmp_path):
    from libra_ray.bench import run
    from libra_ray.endpoints import open_endpoint

    api, _ = servers
    cfg = _cfg(tmp_path, "bench.max_prompts=12", "bench.judge_max_attempts=2", "bench.detector=paper",
               "bench.attack.enabled=false", "bench.capability.enabled=false",
               f"bench.models=[{{name: api, engine: openai, endpoint: {{base_url: '{api.base_url}', api_key_env: null}}}}]")
    summary = run(cfg, open_endpoint=open_endpoint)  # judge.base_url None: the embedded Serve app with the tiny model
    ev = pq.read_table(f"{cfg.bench_dir}/api/evaluations.parquet").to_pylist()
    unjudged = [e for e in ev if e["judge_synthesis_route_v1_label"] is None]
    assert summary["models"]["api"]["unjudged"] == len(unjudged) > 0  # tiny-model nonsense is counted
    assert all(e["judge_synthesis_route_v1_attempts"] == 2 and e["refused_source"] == "rule_only"
               and e["judge_synthesis_route_v1_raw"] for e in unjudged)
