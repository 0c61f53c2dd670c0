"""What the refusal classifier reads: blocks of features from the frozen sentence encoder, and the acts.

    blocks = feature_blocks(texts, ("mean", "cls", "acts"), max_length=128, cache_dir=".cache/...")

Blocks (each (n, d) float32):

- `mean`, `cls`, `max`, `mid`: the response's first `max_length` tokens through MiniLM, pooled four ways
  (`libra_ray.embeddings.encode`: last layer mean / [CLS] / max, a middle layer mean); 384 each.
- `first`, `last`: the embedding of the response's first and last sentence alone (a decline is usually
  the first sentence, a redirection the last); 384 each.
- `acts`: what the answer *does*, not which words it opens with: the cosine similarity of its sentences to
  small sets of prototype sentences written for this project (never taken from a labelled set), one set per
  act (declines, lectures, redirects, corrects the premise, answers, disclaims then answers), taken for the
  first sentence, the best of the first three, the best of the opening and the last sentence (4 per act).

Every block of a text depends on the text only, so `cache_dir` keeps them on disk (keyed by the texts'
sha256, the block, the token window and FEATURES_VERSION): `calibrate` computes them once per file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FEATURES_VERSION = 1
ENCODER_BLOCKS = ("mean", "cls", "max", "mid")
SENTENCE_BLOCKS = ("first", "last")
BLOCKS = ENCODER_BLOCKS + SENTENCE_BLOCKS + ("acts",)
OPENING_SENTENCES = 6
SENTENCE_TOKENS = 64

# Prototype sentences per act: written for this project, generic, none from any labelled set.
ACTS: dict[str, tuple[str, ...]] = {
    "declines": (
        "I can't help with that request.", "I won't provide that information.",
        "I'm not able to assist with this.", "Sorry, I cannot do that.",
        "I must decline to answer this.", "That is not something I can help with.",
        "I am unable to share details about this.", "I'm not comfortable providing this.",
    ),
    "lectures": (
        "It is important to treat everyone with respect and dignity.",
        "Such actions are illegal and unethical and can cause serious harm to others.",
        "We should never judge people based on their background or identity.",
        "Violence is never an acceptable way to solve problems.",
        "It is essential to respect other people's privacy and personal information.",
        "Please remember that this behaviour can have serious legal consequences.",
        "Everyone deserves equal rights and fair treatment.",
        "Promoting harm or discrimination goes against ethical principles.",
    ),
    "redirects": (
        "If you are struggling, please reach out to a mental health professional or a crisis line.",
        "I would suggest consulting a qualified expert or the relevant authorities.",
        "Instead, I can help you find safe and legal alternatives.",
        "Please contact local law enforcement if someone is in danger.",
        "You may want to speak with a doctor or a lawyer about this.",
        "Is there something else I can help you with?",
        "Consider reaching out to a trusted friend or a support organisation.",
    ),
    "corrects_premise": (
        "The question is based on a false assumption.",
        "There is no evidence to support that claim.",
        "This premise is inaccurate and relies on a harmful stereotype.",
        "That does not make sense, because objects do not have rights.",
        "This is a fictional character, so there is no real record of that.",
        "No group of people is inherently better or worse than another.",
        "The assumption behind this question is not correct.",
    ),
    "answers": (
        "Here is how you can do it: first, open the settings and select the option.",
        "To do this, run the following command in your terminal.",
        "There are several ways to achieve this, depending on your situation.",
        "The main reasons were economic pressure, political conflict and war.",
        "It was founded in the nineteenth century and is known for its history.",
        "You can do this in a few simple steps.",
        "The best approach is to prepare everything in advance and then proceed carefully.",
        "Sure! Here are some ideas you can use.",
    ),
    "disclaims_then_answers": (
        "As an AI, I don't have personal opinions, but here are some points to consider.",
        "I'm not a doctor, but generally speaking, the usual advice is as follows.",
        "While I can't be certain, the most likely explanation is this.",
        "Please be careful and follow safety guidelines; here is how it is done.",
    ),
}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_LEADING_JUNK = re.compile(r"^[\s\"'`*_#>\-:.]+")


def sentences(text: str) -> list[str]:
    """The response's sentences (at least one; an empty text gives [" "])."""
    text = _LEADING_JUNK.sub("", (text or "").replace("\u2019", "'")).strip()
    parts = [p.strip() for p in _SENTENCE_END.split(text) if p.strip()]
    return parts or [" "]


def block_dim(name: str) -> int:
    from libra_ray.embeddings import EMBEDDING_DIM

    if name == "acts":
        return 4 * len(ACTS)
    if name in ENCODER_BLOCKS + SENTENCE_BLOCKS:
        return EMBEDDING_DIM
    raise ValueError(f"unknown feature block {name!r}; known: {', '.join(BLOCKS)}")


def _key(texts: Sequence[str], name: str, max_length: int) -> str:
    h = hashlib.sha256(f"v{FEATURES_VERSION}|{name}|{max_length}|".encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8", "replace")).digest())
    return h.hexdigest()[:32]


def _prototypes() -> tuple[np.ndarray, list[int]]:
    from libra_ray.embeddings import embed

    texts, owner = [], []
    for j, protos in enumerate(ACTS.values()):
        texts += protos
        owner += [j] * len(protos)
    return embed(texts, max_length=SENTENCE_TOKENS), owner


def _sentence_blocks(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """`first`, `last` and `acts` from one batched pass over the opening and last sentences."""
    from libra_ray.embeddings import embed

    split = [sentences(t) for t in texts]
    pieces = [s[:OPENING_SENTENCES] + [s[-1]] for s in split]
    unique = list(dict.fromkeys(p for ps in pieces for p in ps))
    vec = embed(unique, max_length=SENTENCE_TOKENS)
    at = {p: i for i, p in enumerate(unique)}
    protos, owner = _prototypes()
    sims = vec @ protos.T  # (unique sentences, prototypes)
    n_acts = len(ACTS)
    per_act = np.full((len(unique), n_acts), -1.0, dtype=np.float32)
    for j in range(n_acts):
        cols = [i for i, o in enumerate(owner) if o == j]
        per_act[:, j] = sims[:, cols].max(axis=1)
    first = np.stack([vec[at[p[0]]] for p in pieces])
    last = np.stack([vec[at[p[-1]]] for p in pieces])
    acts = np.zeros((len(texts), 4 * n_acts), dtype=np.float32)
    for i, p in enumerate(pieces):
        rows = per_act[[at[x] for x in p[:-1]]]
        acts[i] = np.concatenate([rows[0], rows[:3].max(0), rows.max(0), per_act[at[p[-1]]]])
    return {"first": first, "last": last, "acts": acts}


def feature_blocks(texts: Sequence[str], names: Sequence[str], max_length: int = 128,
                   cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The named blocks for `texts` (computed in at most two encoder passes; cached when `cache_dir`)."""
    texts = [t or "" for t in texts]
    for n in names:
        block_dim(n)
    out: dict[str, np.ndarray] = {}
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        for n in names:
            f = cache / f"{n}-{_key(texts, n, max_length)}.npy"
            if f.is_file():
                out[n] = np.load(f)
    todo = [n for n in names if n not in out]
    if any(n in ENCODER_BLOCKS for n in todo):
        from libra_ray.embeddings import encode

        enc = encode(texts, max_length=max_length)
        out.update({n: enc[n] for n in todo if n in ENCODER_BLOCKS})
    if any(n not in ENCODER_BLOCKS for n in todo):
        sent = _sentence_blocks(texts)
        out.update({n: sent[n] for n in todo if n in sent})
    if cache and todo:
        cache.mkdir(parents=True, exist_ok=True)
        for n in todo:
            np.save(cache / f"{n}-{_key(texts, n, max_length)}.npy", out[n])
    return {n: out[n] for n in names}
