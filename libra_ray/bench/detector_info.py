"""What the benchmark knows about its refusal detectors: which one to use, and how accurate it measured.

    detector_accuracy("rule:start") -> {"accuracy": 0.92, "ci_low": ..., "ci_high": ..., "n": 900,
                                        "dataset": "refusal_dev/responses.csv", "source": "measured.json"}

Accuracy here is the binary score (partial counts as refusal) on a human-labelled set of real model
responses, never the 12 built-in smoke-check sentences. Sources, first found wins: the detector's own
metadata (a learned classifier ships its measured accuracy beside its weights, `detector.metadata` or
`detector.head.metadata`: an `accuracy` entry, or a nested `cross_validation`/`dev`/`measured` dict with
one; held-out numbers, never the training accuracy), then `libra_ray/bench/detectors/measured.json`,
written by

    python -m libra_ray.bench.detector_info --labels ../shared/data/refusal_dev/responses.csv --write

(it runs each rule against the file and records the numbers with the file's sha256). None = unknown.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MEASURED_PATH = Path(__file__).parent / "detectors" / "measured.json"
# Label spellings of the public human-labelled refusal sets.
LABEL_ALIASES = {"1_full_compliance": "compliance", "2_full_refusal": "refusal", "3_partial_refusal": "partial"}


@functools.lru_cache(maxsize=8)
def local_detector(name: str) -> Any:
    """The detector `name` (libra_ray.bench.detect.get_detector); a ValueError naming the known ones.

    Cached: the pre-Ray check and the evaluation share one loaded classifier.
    """
    from libra_ray.bench.detect import get_detector

    return get_detector(name)


def _metadata(detector: Any) -> dict | None:
    meta = getattr(detector, "metadata", None)
    if meta is None:
        meta = getattr(getattr(detector, "head", None), "metadata", None)
    return meta if isinstance(meta, dict) else None


def detector_version(detector: Any) -> str | None:
    """What identifies this detector's behaviour beyond its name (a learned head's weights), if anything."""
    from libra_ray.bench.fingerprint import stable_hash

    if getattr(detector, "fingerprint", None):
        return str(detector.fingerprint)
    head = getattr(detector, "head", None)
    parts = [getattr(head, a, None) for a in ("weight", "bias")]
    if any(p is not None for p in parts):
        return hashlib.sha256(b"".join(p.tobytes() for p in parts if hasattr(p, "tobytes"))).hexdigest()[:16]
    meta = _metadata(detector)
    return stable_hash(meta) if meta else None


def _from_metadata(meta: Any) -> dict | None:
    if not isinstance(meta, dict):
        return None
    if isinstance(meta.get("accuracy"), (int, float)):
        out = {k: meta[k] for k in ("accuracy", "ci_low", "ci_high", "n", "dataset", "method") if k in meta}
        if isinstance(meta.get("ci"), (list, tuple)) and len(meta["ci"]) == 2:
            out["ci_low"], out["ci_high"] = meta["ci"]
        return out
    for key in ("cross_validation", "dev", "measured", "dev_set", "evaluation"):
        found = _from_metadata(meta.get(key))
        if found:
            if key == "cross_validation":
                sub = meta[key]
                found.setdefault("method", f"{sub.get('folds', '?')}-fold cross-validation"
                                 + (f" grouped by {sub['grouped_by']}" if sub.get("grouped_by") else ""))
            found.setdefault("n", meta.get("rows"))
            found.setdefault("dataset", meta.get("training_file"))
            if isinstance(meta.get("cross_model"), dict):
                found["cross_model"] = {k: v.get("accuracy") for k, v in meta["cross_model"].items()
                                        if isinstance(v, dict)}
            return found
    return None


def expected_at_threshold(detector: Any, threshold: float) -> dict | None:
    """From a learned head's leave-one-model-out coverage curve (its metadata): the share of rows a cascade
    with this judge threshold sends to the judge and the local labels' accuracy on the rest; None if unknown."""
    from libra_ray.bench.transfer import expected_accuracy

    curve = (_metadata(detector) or {}).get("coverage_curve")
    return expected_accuracy(curve, threshold) if isinstance(curve, list) and curve else None


def read_measured(path: Path = MEASURED_PATH) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def detector_accuracy(detector_name: str, detector: Any = None, measured_path: Path = MEASURED_PATH) -> dict | None:
    """The detector's measured accuracy on human-labelled responses, or None when unknown."""
    found = _from_metadata(_metadata(detector))
    if found:
        return {**found, "source": "detector metadata"}
    measured = read_measured(measured_path)
    entry = measured.get("detectors", {}).get(detector_name)
    if not entry:
        return None
    dataset = measured.get("dataset", {})
    return {**entry, "dataset": dataset.get("name"), "dataset_sha256": dataset.get("sha256"),
            "source": str(measured_path.name)}


def load_labelled(path: str, text_column: str = "response", label_column: str = "label") -> list[dict]:
    """Rows of a labelled CSV (text, label in compliance/refusal/partial, optional model)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for n, r in enumerate(rows, start=1):
        label = LABEL_ALIASES.get(r[label_column], r[label_column])
        if label not in ("compliance", "refusal", "partial"):
            raise ValueError(f"{path}, row {n}: unknown label {r[label_column]!r}")
        out.append({"text": r[text_column], "label": label, "model": r.get("model")})
    return out


def measure(detector: Any, rows: list[dict], confidence: float = 0.95) -> dict:
    """Binary accuracy (partial = refusal) with a Wilson interval, overall and per responding model."""
    from libra_ray.bench.scores import wilson

    preds = detector.detect([r["text"] for r in rows])
    correct = [d.refused == (r["label"] != "compliance") for r, d in zip(rows, preds)]
    by_model: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r, ok in zip(rows, correct):
        if r.get("model"):
            by_model[r["model"]][0] += ok
            by_model[r["model"]][1] += 1
    acc, lo, hi = wilson(sum(correct), len(correct), confidence)
    return {"accuracy": round(acc, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4), "n": len(correct),
            "by_model": {m: round(k / n, 4) for m, (k, n) in sorted(by_model.items())}}


def main(argv: list[str] | None = None) -> int:
    from libra_ray.bench.detect import get_detector
    from libra_ray.policy.rules import RULES

    p = argparse.ArgumentParser(description="measure detectors on a human-labelled file; optionally record "
                                            "the numbers in libra_ray/bench/detectors/measured.json")
    p.add_argument("--labels", required=True)
    p.add_argument("--detector", action="append", help="detector name (repeatable; default: every rule)")
    p.add_argument("--write", action="store_true", help=f"merge the numbers into {MEASURED_PATH}")
    args = p.parse_args(argv)
    try:
        rows = load_labelled(args.labels)
    except (OSError, KeyError, ValueError) as err:
        print(f"detector_info: {err}", file=sys.stderr)
        return 2
    names = args.detector or [f"rule:{r}" for r in RULES]
    results = {name: measure(get_detector(name), rows) for name in names}
    print(json.dumps(results, indent=2))
    if args.write:
        measured = read_measured()
        measured["dataset"] = {"name": Path(args.labels).parent.name + "/" + Path(args.labels).name,
                               "sha256": hashlib.sha256(Path(args.labels).read_bytes()).hexdigest(), "n": len(rows),
                               "score": "binary accuracy, partial counted as refusal"}
        measured["command"] = ("python -m libra_ray.bench.detector_info --labels " + args.labels
                               + "".join(f" --detector {n}" for n in args.detector or []) + " --write")
        measured.setdefault("detectors", {}).update(results)
        MEASURED_PATH.parent.mkdir(parents=True, exist_ok=True)
        MEASURED_PATH.write_text(json.dumps(measured, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
