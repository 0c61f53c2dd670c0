"""The offline stand-in teacher: N distinct items per request that pass the validators (and, for
illegitimate seeds, the safety gate), deterministic by seed, over real HTTP."""

from __future__ import annotations

import json
import urllib.request

import pytest

from libra_ray.policy.safety import actionable_reasons
from libra_ray.synth import prompts as P
from libra_ray.synth.paraphraser import OFFLINE_PARAPHRASER, paraphrase


def _seed_calls(subject: str, cls: str, category: str, form: str = "TEXT"):
    from libra_ray.synth.config import SynthConfig
    from libra_ray.synth.pipeline import teacher_requests

    refusal = P.seed_refusal(subject, cls, category)
    chosen, rejected = (refusal, P.seed_compliance(subject)) if cls == "illegitimate" else \
        (P.seed_helpful(subject, category), refusal)
    row = {"class": cls, "subject": subject, "seed_prompt": P.seed_request(subject, form),
           "seed_chosen": chosen, "seed_rejected": rejected}
    return teacher_requests(row, SynthConfig())


@pytest.mark.parametrize("subject,cls,category,form", [
    ("Sarin", "illegitimate", "chemical weapon", "TEXT"),
    ("Heroin", "illegitimate", "controlled substance", "TEXT"),
    ("Acetone", "legitimate", "laboratory", "TEXT"),
    ("CC(=O)Oc1ccccc1C(=O)O", "legitimate", "pharmaceutical", "SMILES"),
    ("Unlisted compound X", "illegitimate", "explosive", "TEXT"),  # not in the catalogue: still valid
])
def test_every_part_passes_the_validators_and_the_gate(subject, cls, category, form):
    for part, messages, check in _seed_calls(subject, cls, category, form):
        items = paraphrase(messages)
        assert check(json.dumps(items)) is None, (part, items)
        assert len({i.lower() for i in items}) == len(items)  # distinct
        assert P.seed_request(subject, form) not in items  # paraphrases, not the original echoed
        if cls == "illegitimate":
            assert all(not actionable_reasons(t, subject) for t in items), (part, items)


def test_decision_is_in_the_first_word_the_refusal_rule_reads():
    from libra_ray.policy.rules import start_rule

    calls = {part: paraphrase(m) for part, m, _ in _seed_calls("Sarin", "illegitimate", "chemical weapon")}
    assert all(start_rule(t) for t in calls["chosen"]) and not any(start_rule(t) for t in calls["rejected"])
    calls = {part: paraphrase(m) for part, m, _ in _seed_calls("Acetone", "legitimate", "laboratory")}
    assert not any(start_rule(t) for t in calls["chosen"]) and all(start_rule(t) for t in calls["rejected"])


def test_deterministic_by_seed():
    _, messages, _ = _seed_calls("Sarin", "illegitimate", "chemical weapon")[1]
    assert paraphrase(messages, seed=0) == paraphrase(messages, seed=0)
    assert paraphrase(messages, seed=0) != paraphrase(messages, seed=1)


def test_known_compound_answers_recall_its_facts():
    _, messages, _ = _seed_calls("Sarin", "illegitimate", "chemical weapon")[1]
    assert any("chemical warfare agent" in t for t in paraphrase(messages))


def test_not_a_phase2_request_is_an_error():
    with pytest.raises(ValueError, match="phase-2"):
        paraphrase([{"role": "user", "content": "hello"}])


def test_served_over_openai_compatible_http():
    from libra_ray.config import load_config
    from libra_ray.endpoints import open_endpoint

    cfg = load_config(overrides=[f"synth.teacher.model={OFFLINE_PARAPHRASER}"])
    part, messages, check = _seed_calls("Acetone", "legitimate", "laboratory")[0]
    with open_endpoint(cfg.synth.teacher, cfg) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        req = urllib.request.Request(f"{base_url}/chat/completions", method="POST",
                                     data=json.dumps({"model": OFFLINE_PARAPHRASER, "messages": messages}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
    assert check(body["choices"][0]["message"]["content"]) is None
