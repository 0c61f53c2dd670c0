"""Run storage: one way to reach a local path or a URI (s3://, gs://, file://, ...) with pyarrow."""

from __future__ import annotations

import os

from pyarrow import fs as pafs


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or a URI (s3://, gs://, ...)."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound
