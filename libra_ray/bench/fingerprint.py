"""What made a result: fingerprints of model weights and settings, and the keys that pin stored rows.

    generation_fingerprint(cfg, model) -> {"settings": {...}, "hash": "3f9c..."}
    generation_key(prompt, fingerprint_hash) -> "a1b2..."   (stored per generated row)

A generated row is reused only when its `gen_key` equals the key the current config gives it, so a
new checkpoint, engine or sampling setting under the same model name regenerates instead of silently
reusing old answers. The model identity is
- a local folder or URI: its path plus, for every top-level file, name and size and either a sha256 of
  the content (files up to HASH_LIMIT bytes: configs, index files, small weights) or its modification
  time (larger weight shards, where hashing would cost minutes);
- a hub id: the id plus the revision in the local hub cache (`refs/main`), None when not cached;
- an `openai` engine: the endpoint's base_url (or "embedded") and model name.
Settings: engine (and our decoding version), temperature, top_p, seed, max_tokens, system prompt, max_model_len,
the resolved weight dtype (`engines.identity.resolve_dtype`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# The weights' identity and the precision rule are shared with serve (`libra_ray.engines.identity`).
from libra_ray.engines.identity import HASH_LIMIT, resolve_dtype, stable_hash, weights_fingerprint  # noqa: F401

if TYPE_CHECKING:
    from libra_ray.bench.config import BenchModelConfig
    from libra_ray.config import PipelineConfig

def model_identity(cfg: "PipelineConfig", model: "BenchModelConfig") -> dict:
    """Who answers: the endpoint for `openai` engines, the weights (resolved path + fingerprint) otherwise."""
    if model.engine == "openai":
        ep = model.endpoint
        return {"base_url": ep.base_url.rstrip("/") if ep.base_url else "embedded", "model": ep.model}
    from libra_ray.tiny import resolve_model

    path = resolve_model(model.path, cfg, key=f"bench.models.{model.name}.path")
    return {"ref": model.path, **weights_fingerprint(path)}


def model_dtype(cfg: "PipelineConfig", model: "BenchModelConfig") -> str | None:
    """The weight dtype a local engine of this benchmark loads (`resolve_dtype`); None for an endpoint."""
    from libra_ray.engines.identity import device_of

    return None if model.engine == "openai" else resolve_dtype(cfg.bench.dtype, device_of(cfg.bench.num_gpus))


def generation_fingerprint(cfg: "PipelineConfig", model: "BenchModelConfig") -> dict:
    """Everything besides the prompt that decides a generated answer, and its hash."""
    b = cfg.bench
    from libra_ray.engines import DECODING_VERSION

    settings = {"engine": model.engine, "decoding": DECODING_VERSION if model.engine != "openai" else None,
                "model": model_identity(cfg, model), "temperature": b.temperature,
                "top_p": b.top_p, "seed": b.seed, "max_tokens": b.max_tokens, "system_prompt": b.system_prompt,
                "max_model_len": b.max_model_len, "dtype": model_dtype(cfg, model)}
    if model.engine_kwargs:  # only when set, so keys made before engine_kwargs existed stay valid
        settings["engine_kwargs"] = model.engine_kwargs
    return {"settings": settings, "hash": stable_hash(settings)}


def generation_key(prompt: str, fingerprint_hash: str) -> str:
    """The key of one generated row: its prompt and the generation fingerprint."""
    return stable_hash({"prompt": prompt, "generation": fingerprint_hash})
