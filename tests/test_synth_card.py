"""The dataset card a newcomer reads: counts that add up, no raw dicts, expected counts explained, teacher named."""

from __future__ import annotations

import re

from libra_ray.config import load_config
from libra_ray.synth.card import render_card
from libra_ray.synth.pipeline import CLIENT_COUNTERS, _breakdown, combine, dataset_card


def _rows(n_seeds: int = 4):
    rows = []
    for i in range(n_seeds):
        cls = "legitimate" if i % 2 else "illegitimate"
        rows.append({"compound_id": f"c{i}", "name": f"C{i}", "class": cls, "category": "industrial" if i % 2 else "explosive",
                     "form": "TEXT", "subject": f"C{i}", "seed_prompt": f"p{i}", "split": "test" if i == 0 else "train",
                     "prompts": [f"p{i}-{k}" for k in range(6)], "chosens": [f"c{i}-{k}" for k in range(6)],
                     "rejecteds": [f"r{i}-{k}" for k in range(5)], "error": "", "malformed_parts": 0,
                     "safety_dropped": 1 if cls == "illegitimate" else 0, "duplicates_removed": 0, "teacher_calls": 3,
                     "prompt_tokens": 10, "completion_tokens": 20, **{f"client_{k}": 1 for k in CLIENT_COUNTERS}})
    return rows


def test_card_counts_add_up_and_read_as_prose():
    cfg = load_config(overrides=["synth.teacher.model=offline-paraphraser", "synth.num_legitimate=2",
                                 "synth.num_illegitimate=2", "synth.forms=[TEXT]"])
    rows = _rows()
    counts = {s: _breakdown([t for r in rows if r["split"] == s for t in combine(r, "paired")]) for s in ("train", "test")}
    card = dataset_card(cfg, rows, counts, "http://127.0.0.1:1/v1", 1.0)
    md = render_card(card)
    assert not re.search(r"\{'|': \d", md), "raw Python dict in the card"
    assert "offline stand-in for a real teacher" in md and "`offline-paraphraser`" in md
    assert "Prompt version: `v1`" in md and "estimated cost $0.00" in md
    # Expected counts explained: asked 5 per part, at most 4 x 6 prompt texts, 24 kept.
    assert "| prompt | 5 | 24 | 24 | 6.0 |" in md and "| rejected | 5 | 24 | 20 | 5.0 |" in md
    # Per-class rows add up to the split totals.
    for split in ("train", "test"):
        s = card["split"][split]
        assert sum(s["by_class"].values()) == s["rows"]
        assert f"| {split} | {s['rows']} |" in md
    total = card["split"]["train"]["rows"] + card["split"]["test"]["rows"]
    assert f"| total | {total} |" in md
    assert card["teacher"]["description"] and card["kept"]["chosen"]["kept"] == 24


def test_a_real_teacher_is_not_called_a_stand_in():
    cfg = load_config(overrides=["synth.teacher.base_url=https://api.example/v1", "synth.teacher.model=gpt-x"])
    rows = _rows()
    counts = {s: _breakdown([t for r in rows if r["split"] == s for t in combine(r, "paired")]) for s in ("train", "test")}
    md = render_card(dataset_card(cfg, rows, counts, "https://api.example/v1", 1.0))
    assert "stand-in" not in md and "`gpt-x`" in md
