"""Semantic near-duplicate removal: paraphrases that say the same thing in nearly the same words.

The exact/normalised rule (`pipeline.dedupe`) only catches case, spacing and punctuation variants.
This rule embeds every item with the shared sentence-embedding model (`libra_ray.embeddings.embed`,
all-MiniLM-L6-v2, unit-norm, offline) and drops an item whose cosine similarity to an item kept before
it (within the same list: one seed's prompts, chosens or rejecteds) is >= the threshold. Order is kept,
so the seed text (#0) always survives. Runs in the phase-2 Ray Data actors, one `embed` call per batch.

Paraphrases of one text are meant to mean the same thing, so cosine similarity between them is high by
design: only a high threshold separates near-verbatim restatements from real rewordings (measured on
tests/data/paraphrase_set.json, see `test_synth_dedup.py`).
"""

from __future__ import annotations

import numpy as np

LIST_KEYS = ("prompts", "chosens", "rejecteds")


def keep_mask(embeddings: np.ndarray, threshold: float) -> list[bool]:
    """Greedy in order: keep an item unless it is >= threshold similar to an already kept one."""
    kept: list[int] = []
    mask = []
    for i, vec in enumerate(embeddings):
        duplicate = bool(kept) and float(np.max(embeddings[kept] @ vec)) >= threshold
        mask.append(not duplicate)
        if not duplicate:
            kept.append(i)
    return mask


def semantic_dedupe(items: list[str], threshold: float | None) -> tuple[list[str], int]:
    """(kept, removed) for one list; unchanged when `threshold` is None."""
    if threshold is None or len(items) < 2:
        return list(items), 0
    from libra_ray.embeddings import embed

    mask = keep_mask(embed(items), threshold)
    kept = [t for t, keep in zip(items, mask) if keep]
    return kept, len(items) - len(kept)


def semantic_dedupe_rows(rows: list[dict], threshold: float | None) -> None:
    """In place, for phase-2 rows: dedupe each row's lists and count `semantic_duplicates_removed`.
    All texts of the batch are embedded in one call (the model loads once per actor)."""
    for row in rows:
        row["semantic_duplicates_removed"] = 0
    if threshold is None:
        return
    lists = [(row, key) for row in rows for key in LIST_KEYS if len(row[key]) >= 2]
    texts = [t for row, key in lists for t in row[key]]
    if not texts:
        return
    from libra_ray.embeddings import embed

    vectors = embed(texts)
    start = 0
    for row, key in lists:
        items = row[key]
        mask = keep_mask(vectors[start:start + len(items)], threshold)
        start += len(items)
        row[key] = [t for t, keep in zip(items, mask) if keep]
        row["semantic_duplicates_removed"] += len(items) - len(row[key])
