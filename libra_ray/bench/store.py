"""Benchmark inputs and resumable outputs: prompts in, Parquet shards out (local paths or URIs).

Finished rows are written as Parquet shards under a folder; a shard is written under a hidden name
and renamed when complete, so a crash never leaves a half-written shard that readers would trust.
Readers ignore hidden (`.`/`_`) files, which is also pyarrow's default.
"""

from __future__ import annotations

import hashlib
import uuid

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from libra_ray.storage import exists, filesystem

REQUIRED_COLUMNS = ("prompt", "compound_id", "name", "class", "category", "form")
CLASSES = ("legitimate", "illegitimate")


def row_id(prompt: str) -> str:
    """Stable id of a benchmark row: the prompt text decides it (rows are deduplicated by prompt)."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def read_table(path: str) -> pa.Table:
    """A Parquet file or a folder of Parquet files (hidden files ignored)."""
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    if info.type == pafs.FileType.File:
        return pq.read_table(p, filesystem=fs)
    return pds.dataset(p, filesystem=fs, format="parquet").to_table()


def load_prompts(path: str) -> pa.Table:
    """Benchmark prompts from Parquet: checked, deduplicated by prompt, with a stable `id` column.

    The test split holds several triplets per prompt; a benchmark row is one distinct prompt.
    """
    if not exists(path):
        raise FileNotFoundError(
            f"benchmark prompts not found at {path}: run `libra-ray synth` first or set bench.prompts"
        )
    table = read_table(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"benchmark prompts at {path} lack column(s) {', '.join(missing)}; "
                         f"expected {', '.join(REQUIRED_COLUMNS)}")
    keep = [c for c in (*REQUIRED_COLUMNS, "reference") if c in table.column_names]
    rows, seen = [], set()
    for row in table.select(keep).to_pylist():
        if not row["prompt"] or row["prompt"] in seen:
            continue
        if row["class"] not in CLASSES:
            raise ValueError(f"benchmark prompts at {path}: class {row['class']!r} is not one of {CLASSES}")
        seen.add(row["prompt"])
        rows.append({"id": row_id(row["prompt"]), **row})
    if not rows:
        raise ValueError(f"benchmark prompts at {path} hold no prompt")
    return pa.Table.from_pylist(rows)


def done_ids(folder: str, column: str = "id") -> set[str]:
    """Ids already written as complete shards under `folder` (empty if the folder does not exist)."""
    if not exists(folder):
        return set()
    fs, p = filesystem(folder)
    if not fs.get_file_info(pafs.FileSelector(p, recursive=False)):
        return set()
    return set(pds.dataset(p, filesystem=fs, format="parquet").to_table(columns=[column])[column].to_pylist())


def write_shard(folder: str, table: pa.Table) -> str:
    """Write `table` as one new shard in `folder`, atomically (hidden temp name, then rename)."""
    fs, p = filesystem(folder)
    fs.create_dir(p, recursive=True)
    name = f"part-{uuid.uuid4().hex[:12]}.parquet"
    tmp, final = f"{p}/.{name}.tmp", f"{p}/{name}"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, final)
    return final


def write_file(path: str, data: bytes) -> None:
    fs, p = filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def write_table(path: str, table: pa.Table) -> None:
    """Write one Parquet file atomically (hidden temp name in the same folder, then rename)."""
    fs, p = filesystem(path)
    folder, name = p.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, p)
