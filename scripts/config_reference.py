"""Regenerate the config reference in jobs/README.md from the config models (`libra-ray config --defaults`).

    .venv/bin/python scripts/config_reference.py          # rewrite jobs/README.md in place
    .venv/bin/python scripts/config_reference.py --check  # exit 1 if jobs/README.md is out of date

tests/test_config_docs.py fails when jobs/README.md and the models disagree, so the reference cannot drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "jobs" / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def reference_block() -> str:
    sys.path.insert(0, str(ROOT))
    from libra_ray.config import PipelineConfig, documented_config

    return f"{START}\n```yaml\n{documented_config(PipelineConfig())}\n```\n{END}"


def current_block(text: str) -> str:
    start, end = text.index(START), text.index(END) + len(END)
    return text[start:end]


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    block = reference_block()
    if "--check" in argv:
        ok = current_block(text) == block
        print("README config reference is up to date" if ok else
              "README config reference is stale: run python scripts/config_reference.py")
        return 0 if ok else 1
    README.write_text(text.replace(current_block(text), block), encoding="utf-8")
    print(f"wrote the config reference into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
