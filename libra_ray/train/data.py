"""Training data and file movement: the synthesis output's train split (Parquet, local or any pyarrow URI).

Only the `train` split is ever opened: the held-out test compounds live in a sibling folder that this
module never lists. Rows carry plain strings; they become conversational examples so TRL applies the
model's chat template exactly as vLLM and Serve will at inference time.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from libra_ray._config_base import ConfigError, join_uri
from libra_ray.storage import filesystem

if TYPE_CHECKING:
    import pyarrow as pa

    from libra_ray.config import PipelineConfig

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")


def train_split_uri(cfg: "PipelineConfig") -> str:
    """`train.dataset`, else this run's synthesis output `{dataset_dir}/train`."""
    return cfg.train.dataset or join_uri(cfg.dataset_dir, "train")


def read_train_table(uri: str) -> "pa.Table":
    """Read and validate the train split: required string columns present, at least one row.

    A column `split` (if any) is honoured: rows of other splits are dropped, never trained on.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    from pyarrow import fs as pafs

    store_fs, path = filesystem(uri)
    info = store_fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"train.dataset: {uri} does not exist (run `libra-ray synth` first, or set train.dataset)")
    dataset = ds.dataset(path, filesystem=store_fs, format="parquet")
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise ConfigError(f"train.dataset: {uri} lacks required column(s) {missing}; "
                          f"found {dataset.schema.names}; need {list(REQUIRED_COLUMNS)} (plain strings)")
    columns = list(REQUIRED_COLUMNS) + (["split"] if "split" in dataset.schema.names else [])
    table = dataset.to_table(columns=columns)
    if "split" in columns:
        table = table.filter(pc.equal(table["split"], "train")).drop(["split"])
    for name in REQUIRED_COLUMNS:
        if not str(table.schema.field(name).type) in ("string", "large_string"):
            raise ConfigError(f"train.dataset: column {name!r} must hold strings, not {table.schema.field(name).type}")
    if table.num_rows == 0:
        raise ConfigError(f"train.dataset: {uri} has no training rows")
    return table


def to_conversational(table: "pa.Table", kind: str):
    """A `datasets.Dataset` in TRL's conversational format: DPO preference pairs or SFT prompt/completion."""
    from datasets import Dataset

    rows = table.to_pydict()

    def user(text: str) -> list[dict]:
        return [{"role": "user", "content": text}]

    def assistant(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    if kind == "sft":  # SFT on the chosen responses (loss on the completion only)
        data = {"prompt": [user(p) for p in rows["prompt"]], "completion": [assistant(c) for c in rows["chosen"]]}
    else:
        data = {"prompt": [user(p) for p in rows["prompt"]], "chosen": [assistant(c) for c in rows["chosen"]],
                "rejected": [assistant(r) for r in rows["rejected"]]}
    return Dataset.from_dict(data)


def copy_tree(src: str, dst: str) -> None:
    """Copy a folder between local paths and/or pyarrow URIs, replacing `dst` (written beside, then swapped)."""
    from pyarrow import fs as pafs

    src_fs, src_path = filesystem(src)
    dst_fs, dst_path = filesystem(dst)
    if isinstance(dst_fs, pafs.LocalFileSystem):
        tmp = f"{dst_path}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        pafs.copy_files(src_path, tmp, source_filesystem=src_fs, destination_filesystem=dst_fs)
        shutil.rmtree(dst_path, ignore_errors=True)
        os.replace(tmp, dst_path)
    else:
        dst_fs.create_dir(dst_path, recursive=True)
        pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)


def localize(uri: str, cache_root: str) -> str:
    """A local folder holding `uri` (downloaded once into `cache_root` when it is a remote URI)."""
    if "://" not in uri:
        return uri
    import fcntl
    import hashlib

    local = os.path.join(cache_root, hashlib.sha256(uri.encode()).hexdigest()[:16])
    os.makedirs(cache_root, exist_ok=True)
    with open(f"{local}.lock", "w") as lock:  # workers on one node download once, not over each other
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(local, ".complete")):
            copy_tree(uri, local)
            open(os.path.join(local, ".complete"), "w").close()
    return local


def read_text(uri: str) -> str | None:
    """Contents of a small text file (local or URI), None when absent."""
    from pyarrow import fs as pafs

    store_fs, path = filesystem(uri)
    if store_fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with store_fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(uri: str, text: str) -> None:
    store_fs, path = filesystem(uri)
    store_fs.create_dir(os.path.dirname(path), recursive=True)
    with store_fs.open_output_stream(path) as f:
        f.write(text.encode())
