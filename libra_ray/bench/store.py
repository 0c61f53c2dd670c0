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

from libra_ray.seeds.catalogue import CLASSES
from libra_ray.storage import exists, filesystem

# Optional prompt columns and their defaults (external benchmark files rarely carry them).
OPTIONAL_DEFAULTS = {"compound_id": None, "name": None, "form": "TEXT"}  # None: the row id
UNCATEGORISED = "uncategorised"


def row_id(prompt: str) -> str:
    """Stable id of a benchmark row: the prompt text decides it (rows are deduplicated by prompt)."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def read_table(path: str) -> pa.Table:
    """A Parquet, CSV or JSONL file, or a folder of Parquet files (hidden files ignored)."""
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    if info.type == pafs.FileType.File:
        suffix = p.rsplit(".", 1)[-1].lower()
        if suffix in ("csv", "jsonl", "ndjson"):
            from pyarrow import csv as pacsv
            from pyarrow import json as pajson

            # Every CSV cell stays text (class values such as "0"/"1" are matched as written); empty = null.
            if info.size == 0:
                return pa.table({})  # an empty file is a table without rows, not a parse error
            with fs.open_input_stream(p) as f:
                if suffix == "csv":
                    options = pacsv.ConvertOptions(column_types=_all_strings(fs, p), strings_can_be_null=True)
                    return pacsv.read_csv(f, convert_options=options)
                return pajson.read_json(f)
        return pq.read_table(p, filesystem=fs)
    return pds.dataset(p, filesystem=fs, format="parquet").to_table()


def _all_strings(fs, p: str) -> dict:
    from pyarrow import csv as pacsv

    with fs.open_input_stream(p) as f:
        names = pacsv.open_csv(f).schema.names
    return {n: pa.string() for n in names}


def load_prompts(path: str, prompt_column: str = "prompt", class_column: str = "class",
                 category_column: str | None = "category", reference_column: str = "reference",
                 class_values: dict[str, str] | None = None) -> pa.Table:
    """Benchmark prompts (Parquet, CSV or JSONL): checked, mapped to our columns, deduplicated by prompt.

    The test split holds several triplets per prompt; a benchmark row is one distinct prompt. An
    external set names its columns (`prompt_column`, ...) and may map its class values
    (`class_values`, e.g. {"unsafe": "illegitimate"}); compound_id/name/form get defaults when absent.
    """
    if not exists(path):
        raise FileNotFoundError(
            f"benchmark prompts not found at {path}: run `libra-ray synth` first or set bench.prompts"
        )
    try:
        table = read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"benchmark prompts at {path} cannot be read: {str(err).splitlines()[0]}") from None
    if table.num_rows == 0:  # an empty file, a header only, a folder without Parquet files
        raise ValueError(f"benchmark prompts at {path} hold no prompt: the set is empty, nothing to benchmark")
    names = table.column_names
    wanted = {"bench.prompt_column": prompt_column, "bench.class_column": class_column}
    if category_column is not None:
        wanted["bench.category_column"] = category_column
    missing = [f"{col!r} ({key})" for key, col in wanted.items() if col not in names]
    if missing:
        raise ValueError(f"benchmark prompts at {path} lack column(s) {', '.join(missing)}; "
                         f"found {', '.join(names)}")
    mapping = class_values or {}
    rows, seen = [], set()
    for n, row in enumerate(table.to_pylist(), start=1):
        prompt = row[prompt_column]
        if not prompt or prompt in seen:
            continue
        raw = row[class_column]
        cls = mapping.get(str(raw), raw)
        if cls not in CLASSES:
            hint = f" (map it with bench.class_values)" if not mapping or str(raw) not in mapping else ""
            raise ValueError(f"benchmark prompts at {path}, row {n}: class {raw!r} is not one of "
                             f"{', '.join(CLASSES)}{hint}")
        seen.add(prompt)
        rid = row_id(prompt)
        out = {"id": rid, "prompt": prompt, "class": cls,
               "category": str(row[category_column]) if category_column else UNCATEGORISED}
        for col, default in OPTIONAL_DEFAULTS.items():
            value = row.get(col)
            out[col] = value if value is not None else (default if default is not None else rid)
        if row.get(reference_column) is not None:
            out["reference"] = row[reference_column]
        rows.append(out)
    if not rows:
        raise ValueError(f"benchmark prompts at {path} hold no prompt: every {prompt_column!r} is empty, nothing to benchmark")
    return pa.Table.from_pylist(rows)


def read_shards(folder: str, columns: list[str] | None = None) -> pa.Table | None:
    """Every complete shard under `folder` as one table (None if there is none); `columns` those only.

    Shards written by older versions may lack newer columns (e.g. `gen_key`): they read as nulls.
    """
    if not exists(folder):
        return None
    fs, p = filesystem(folder)
    files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(p, recursive=False))
                   if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_")))
    if not files:
        return None
    tables = []
    for f in files:
        present = None if columns is None else [c for c in columns if c in pq.read_schema(f, filesystem=fs).names]
        tables.append(pq.read_table(f, columns=present, filesystem=fs))
    return pa.concat_tables(tables, promote_options="default")


def stored_keys(folder: str, key_column: str = "gen_key") -> tuple[dict[str, set], dict[str, set]]:
    """(done, retryable): id -> the keys its stored rows carry (None for rows written before keys existed),
    split by outcome in one read. `retryable` holds rows that failed for a reason that may pass (`error`
    set, `error_permanent` not true): they are to be tried again, not reused; `done` holds the rest."""
    table = read_shards(folder, ["id", key_column, "error", "error_permanent"])
    done: dict[str, set] = {}
    retryable: dict[str, set] = {}
    if table is None:
        return done, retryable
    n = table.num_rows
    keys = table[key_column].to_pylist() if key_column in table.column_names else [None] * n
    errors = table["error"].to_pylist() if "error" in table.column_names else [None] * n
    permanent = table["error_permanent"].to_pylist() if "error_permanent" in table.column_names else [None] * n
    for rid, key, error, final in zip(table["id"].to_pylist(), keys, errors, permanent):
        (retryable if error is not None and not final else done).setdefault(rid, set()).add(key)
    return done, retryable


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
