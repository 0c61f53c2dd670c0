"""Semantic near-duplicate removal on a real-looking paraphrase set (tests/data/paraphrase_set.json):
20 everyday-chemistry seed texts, 104 teacher-style paraphrases labelled near_verbatim / reworded, and
28 distinct-meaning texts on the same topics. Uses the real embedding model (offline)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from libra_ray.synth.dedup import semantic_dedupe, semantic_dedupe_rows
from libra_ray.synth.pipeline import dedupe

DATA = json.loads((Path(__file__).parent / "data" / "paraphrase_set.json").read_text())
THRESHOLD = 0.95  # the value the docs recommend (and jobs/full_scale.yaml sets)


def labelled_lists() -> list[list[tuple[str, str]]]:
    return [[("seed", g["seed"])] + [(p["label"], p["text"]) for p in g["paraphrases"]] + [("distinct", d) for d in g["distinct"]]
            for g in DATA["groups"]]


def removed_by(rule) -> Counter:
    out: Counter = Counter()
    for items in labelled_lists():
        kept = Counter(rule([t for _, t in items]))
        for label, text in items:
            if kept[text] > 0:
                kept[text] -= 1
            else:
                out[label] += 1
    return out


@pytest.fixture(scope="module")
def semantic_removed() -> Counter:
    return removed_by(lambda texts: semantic_dedupe(texts, THRESHOLD)[0])


def test_the_set_is_real_looking():
    labels = Counter(label for items in labelled_lists() for label, _ in items)
    assert len(DATA["groups"]) == 20 and labels["near_verbatim"] >= 40 and labels["reworded"] >= 60 and labels["distinct"] >= 20


def test_embedding_rule_removes_near_verbatim_paraphrases_the_exact_rule_misses(semantic_removed):
    exact = removed_by(lambda texts: dedupe(texts)[0])
    labels = Counter(label for items in labelled_lists() for label, _ in items)
    assert semantic_removed["near_verbatim"] >= 0.9 * labels["near_verbatim"], semantic_removed
    assert exact["near_verbatim"] <= 0.1 * labels["near_verbatim"], exact  # case/punctuation variants only
    # Real rewordings and different statements stay; the seed text (#0) always survives.
    assert semantic_removed["reworded"] <= 0.05 * labels["reworded"], semantic_removed
    assert semantic_removed["distinct"] == 0 and semantic_removed["seed"] == 0


def test_off_means_unchanged_and_rows_are_counted():
    texts = ["Rust forms when iron reacts with oxygen and water over time.",
             "Rust forms when iron reacts with oxygen and moisture over time.", "Bleach must not be mixed with ammonia."]
    assert semantic_dedupe(texts, None) == (texts, 0)
    rows = [{"prompts": texts[:1], "chosens": list(texts), "rejecteds": []}]
    semantic_dedupe_rows(rows, None)
    assert rows[0]["semantic_duplicates_removed"] == 0 and rows[0]["chosens"] == texts
    semantic_dedupe_rows(rows, THRESHOLD)
    assert rows[0]["chosens"] == [texts[0], texts[2]] and rows[0]["semantic_duplicates_removed"] == 1
