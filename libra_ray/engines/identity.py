"""What a served or benchmarked model is: its weights' fingerprint and its decoding precision.

    resolve_dtype("auto", "cuda") -> "bfloat16"    one rule for both engines, bench and serve
    weights_fingerprint(path)     -> {"path": ..., "files": "<sha256>", "n_files": 3}

Precision rule (`dtype` key of bench and serve): `auto` = bfloat16 on CUDA, float32 on CPU, for the
transformers engine and vLLM alike (vLLM always gets the resolved dtype, never its own `auto`, which
loads bfloat16 on CPU), so bench and serve decode the same weights the same way. No heavy imports here.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Literal

DType = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: str, device: str) -> str:
    """The weight dtype an engine loads: `auto` = bfloat16 on CUDA, float32 on CPU; explicit ones as given."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    return "bfloat16" if str(device).startswith("cuda") else "float32"


def device_of(num_gpus: float) -> str:
    """The device a replica/actor with `num_gpus` decodes on (Ray hides GPUs from actors that ask for none)."""
    return "cuda" if num_gpus > 0 else "cpu"


HASH_LIMIT = 64 * 2**20  # bytes; larger files are fingerprinted by size + mtime


def stable_hash(obj: Any, n: int = 16) -> str:
    """sha256 of a JSON-serialisable object with sorted keys (the first `n` hex digits)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def weights_fingerprint(path: str) -> dict:
    """Identity of the weights at `path`: folder/URI content fingerprint, or hub id + cached revision."""
    from pyarrow import fs as pafs

    from libra_ray.storage import exists, filesystem

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

    ref = os.path.join(HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"), "refs", "main")
    try:
        with open(ref) as f:
            return f.read().strip() or None
    except OSError:
        return None
