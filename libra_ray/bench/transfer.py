"""How well a refusal detector transfers to text it was not built from, measured on what we have.

    transfer(detector, data)  -> {"in_sample": 0.97, "splits": {"model: gpt-4 -> llama-2-70b-chat": {...}, ...},
                                  "gap": 0.03}

Splits: leave-one-model-out (train on one responding model's rows, test on every other model's) when the
file has a `model` column, and leave-one-prompt-type-out (train on the safe prompts, test on the unsafe
contrast prompts, and the reverse) when it has a prompt type (a `type`/`prompt_type` column, or the dev
set's known layout: in each model's block of 450 rows the first 250 prompts are safe). A learned head is
re-fitted on the training side with its own recipe (feature spec, L2, class weights); a rule has nothing
fitted, so its split number is its accuracy on the test side. `gap` = in-sample accuracy minus the mean
leave-one-model-out accuracy: what in-sample numbers overstate. `coverage_curve` turns the out-of-model
predictions into the cascade's accuracy-at-coverage table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from libra_ray.bench.calibrate import LabelledSet

# sha256 of ../shared/data/refusal_dev/responses.csv: 900 rows, two models x (250 safe + 200 unsafe) prompts.
DEV_SET_SHA256 = "85652d5cf6a9de46d38506fbc72f479cd893a066d70437fdcbb0da5b058ed880"
DEV_SAFE_PER_MODEL = 250
THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)


def feature_cache_dir() -> str | None:
    """Where feature blocks are cached on disk ($LIBRA_RAY_FEATURE_CACHE, else .cache/libra_ray/features when
    the working directory has a .cache folder; "" disables)."""
    env = os.environ.get("LIBRA_RAY_FEATURE_CACHE")
    if env is not None:
        return env or None
    return os.path.join(".cache", "libra_ray", "features") if os.path.isdir(".cache") else None


def prompt_types(data: "LabelledSet", sha256: str | None = None) -> list[str] | None:
    """`safe` / `unsafe` per row, or None when the file does not say."""
    for col in ("prompt_type", "type"):
        if col in data.columns:
            return [str(v) for v in data.columns[col]]
    if sha256 == DEV_SET_SHA256 and "model" in data.columns:
        seen: dict[str, int] = {}
        out = []
        for m in data.columns["model"]:
            k = seen.get(m, 0)
            seen[m] = k + 1
            out.append("safe" if k < DEV_SAFE_PER_MODEL else "unsafe")
        return out
    return None


def splits(data: "LabelledSet", sha256: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (train rows, test rows)}: leave-one-model-out, then leave-one-prompt-type-out."""
    out = {}
    for kind, values in (("model", [str(m) for m in data.columns.get("model", [])]),
                         ("prompt type", prompt_types(data, sha256) or [])):
        col = np.array(values)
        groups = sorted(set(values))
        if len(groups) < 2:
            continue
        for g in groups:
            rest = [o for o in groups if o != g]
            out[f"{kind}: {g} -> {', '.join(rest)}"] = (np.where(col == g)[0], np.where(col != g)[0])
    return out


def _learned(detector: Any) -> bool:
    return hasattr(detector, "head") and hasattr(detector.head, "spec")


def _scores(data: "LabelledSet", found: Sequence[Any], rows: np.ndarray) -> dict:
    truth = data.refused[rows]
    pred = np.array([found[i].refused for i in range(len(rows))])
    out = {"n": int(len(rows)), "accuracy": float((pred == truth).mean())}
    if found and found[0].probabilities is not None:
        out["accuracy_3class"] = float(np.mean([found[i].label == data.labels[r] for i, r in enumerate(rows)]))
    return out


def transfer(detector: Any, data: "LabelledSet", sha256: str | None = None,
             cache_dir: str | None = None) -> dict:
    """In-sample accuracy, every split's accuracy, the gap; `predictions` keeps the out-of-model rows'
    (row, refused-probability, correct) for the coverage curve."""
    from libra_ray.bench.classifier import features, fit_head, predict

    parts = splits(data, sha256)
    if _learned(detector):
        head = detector.head
        x = features(data.texts, head.spec, cache_dir=cache_dir)
        every = predict(head, x)
    else:
        x, every = None, detector.detect(data.texts)
    out: dict = {"in_sample": _scores(data, every, np.arange(len(data.texts))), "splits": {}, "learned": _learned(detector)}
    oom: list[tuple[int, float, bool]] = []
    for name, (train, test) in parts.items():
        if x is not None:
            meta = detector.head.metadata
            refit = fit_head(x[train], [data.labels[i] for i in train], l2=float(meta.get("l2", 1e-3)),
                             class_weight_power=float(meta.get("class_weight_power", 0.5)), spec=detector.head.spec)
            found = predict(refit, x[test])
        else:
            found = [every[i] for i in test]
        out["splits"][name] = _scores(data, found, test)
        if name.startswith("model:"):
            oom += [(int(r), float(d.p_refused), bool(d.refused == data.refused[r])) for r, d in zip(test, found)]
    lomo = [v["accuracy"] for k, v in out["splits"].items() if k.startswith("model:")]
    out["gap"] = out["in_sample"]["accuracy"] - float(np.mean(lomo)) if lomo else None
    out["predictions"] = oom
    return out


def coverage_curve(predictions: Sequence[tuple[int, float, bool]], thresholds: Sequence[float] = THRESHOLDS) -> list[dict]:
    """For each judge threshold: the share of rows the cascade sends to the judge (decision confidence
    max(p, 1 - p) below it) and the detector's accuracy on the rows it keeps."""
    conf = np.array([max(p, 1 - p) for _, p, _ in predictions])
    ok = np.array([c for _, _, c in predictions])
    out = []
    for t in thresholds:
        keep = conf >= t
        out.append({"threshold": t, "sent_to_judge": float(1 - keep.mean()) if len(conf) else 0.0,
                    "kept": int(keep.sum()), "accuracy_kept": float(ok[keep].mean()) if keep.any() else None})
    return out


def expected_accuracy(curve: Sequence[dict], threshold: float) -> dict | None:
    """The curve's row for `threshold` (the largest measured threshold <= it), or None."""
    rows = [r for r in curve if r["threshold"] <= threshold + 1e-9]
    return max(rows, key=lambda r: r["threshold"]) if rows else None
