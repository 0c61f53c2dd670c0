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
Settings: engine (and our decoding version), temperature, top_p, seed, max_tokens, system prompt, max_model_len.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pyarrow import fs as pafs

from libra_ray.storage import exists, filesystem

if TYPE_CHECKING:
    from libra_ray.bench.config import BenchModelConfig
    from libra_ray.config import PipelineConfig

HASH_LIMIT = 64 * 2**20  # bytes; larger files are fingerprinted by size + mtime


def stable_hash(obj: Any, n: int = 16) -> str:
    """sha256 of a JSON-serialisable object with sorted keys (the first `n` hex digits)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def weights_fingerprint(path: str) -> dict:
    """Identity of the weights at `path`: folder/URI content fingerprint, or hub id + cached revision."""
    if not exists(path):
        return {"hub_id": path, "revision": _hub_revision(path)}
    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    entries = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(inner))
    files = {}
    for e in sorted(entries, key=lambda e: e.path):
        if e.type != pafs.FileType.File or e.base_name.startswith("."):
            continue
        if e.size <= HASH_LIMIT:
            digest = hashlib.sha256()
            with fs.open_input_stream(e.path) as f:
                while chunk := f.read(2**20):
                    digest.update(chunk)
            files[e.base_name] = {"size": e.size, "sha256": digest.hexdigest()}
        else:
            files[e.base_name] = {"size": e.size, "mtime_ns": e.mtime_ns}
    return {"path": inner if "://" not in path else path, "files": stable_hash(files, 64), "n_files": len(files)}


def _hub_revision(repo_id: str) -> str | None:
    """The commit the local hub cache resolves `main` to (what an offline load would use), if cached."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    import os

    ref = os.path.join(HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"), "refs", "main")
    try:
        with open(ref) as f:
            return f.read().strip() or None
    except OSError:
        return None


def model_identity(cfg: "PipelineConfig", model: "BenchModelConfig") -> dict:
    """Who answers: the endpoint for `openai` engines, the weights (resolved path + fingerprint) otherwise."""
    if model.engine == "openai":
        ep = model.endpoint
        return {"base_url": ep.base_url.rstrip("/") if ep.base_url else "embedded", "model": ep.model}
    from libra_ray.tiny import resolve_model

    path = resolve_model(model.path, cfg, key=f"bench.models.{model.name}.path")
    return {"ref": model.path, **weights_fingerprint(path)}


def generation_fingerprint(cfg: "PipelineConfig", model: "BenchModelConfig") -> dict:
    """Everything besides the prompt that decides a generated answer, and its hash."""
    b = cfg.bench
    from libra_ray.engines import DECODING_VERSION

    settings = {"engine": model.engine, "decoding": DECODING_VERSION if model.engine != "openai" else None,
                "model": model_identity(cfg, model), "temperature": b.temperature,
                "top_p": b.top_p, "seed": b.seed, "max_tokens": b.max_tokens, "system_prompt": b.system_prompt,
                "max_model_len": b.max_model_len}
    if model.engine_kwargs:  # only when set, so keys made before engine_kwargs existed stay valid
        settings["engine_kwargs"] = model.engine_kwargs
    return {"settings": settings, "hash": stable_hash(settings)}


def generation_key(prompt: str, fingerprint_hash: str) -> str:
    """The key of one generated row: its prompt and the generation fingerprint."""
    return stable_hash({"prompt": prompt, "generation": fingerprint_hash})
