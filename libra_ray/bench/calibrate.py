"""`libra-ray calibrate`: score refusal detectors against human labels, and fit the classifier head.

    libra-ray calibrate --labels responses.csv --detector all --json out.json
    libra-ray calibrate --fit responses.csv --out refusal_head.safetensors

A labelled file (CSV, JSONL or Parquet) has a response column and a label column. Labels are
`compliance` / `refusal` / `partial` (or XSTest's `1_full_compliance` / `2_full_refusal` /
`3_partial_refusal`); partial counts as a refusal for the binary score (refusal = the positive class).
Per detector: accuracy with its Wilson interval, precision, recall, F1, Cohen's kappa, the confusion
matrix (3-class where the detector gives 3 classes), and its worst errors. Judges (`judge:PROMPT_ID`)
go through the one cached `ChatClient` on `bench.judge` (a re-run pays for nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from libra_ray.bench.config import REFUSAL_JUDGE_IDS
from libra_ray.bench.detect import LABELS, Detection, get_detector, offline_detector_names
from libra_ray.bench.scores import wilson

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig

log = logging.getLogger(__name__)

LABEL_ALIASES: dict[str, str] = {
    "compliance": "compliance", "full_compliance": "compliance", "1_full_compliance": "compliance",
    "refusal": "refusal", "full_refusal": "refusal", "2_full_refusal": "refusal",
    "partial": "partial", "partial_refusal": "partial", "3_partial_refusal": "partial",
}
REFUSAL_JUDGES = REFUSAL_JUDGE_IDS
ERROR_TEXT_CHARS = 160
# l2 of the shipped head, chosen by 5-fold CV (grouped by prompt) on the dev set (libra_ray/bench/README.md).
DEFAULT_L2 = 1e-3
# What the shipped head reads (libra_ray.bench.classifier.SPECS), chosen by leave-one-model-out accuracy.
DEFAULT_FEATURES = "acts"


class CalibrateError(ValueError):
    """Bad input for calibrate: a one-line message, exit status 2."""


# ---- labelled files ----------------------------------------------------------------------------------
@dataclass
class LabelledSet:
    path: str
    texts: list[str]
    labels: list[str]  # canonical: compliance / refusal / partial
    columns: dict[str, list] = field(default_factory=dict)  # every other column (model, prompt, ...)

    @property
    def refused(self) -> np.ndarray:
        return np.array([lab != "compliance" for lab in self.labels])


def read_table(path: str):
    """A pyarrow Table from a CSV, JSONL or Parquet file (by extension)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise CalibrateError(f"{path}: no such file")
    ext = path.lower().rsplit(".", 1)[-1]
    try:
        if ext == "csv":
            # Responses span lines: quoted newlines must not end a row.
            return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
        if ext in ("jsonl", "json", "ndjson"):
            return pajson.read_json(path)
        if ext in ("parquet", "pq"):
            return pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError, UnicodeDecodeError) as err:
        raise CalibrateError(f"{path}: cannot read as {ext.upper()} ({_one_line(err)})") from None
    raise CalibrateError(f"{path}: unknown file type .{ext} (use .csv, .jsonl or .parquet)")


def load_labelled(path: str, text_column: str = "response", label_column: str = "label") -> LabelledSet:
    """Read and validate a labelled file; unknown labels are an error naming the row (1-based data row)."""
    table = read_table(path)
    for col in (text_column, label_column):
        if col not in table.column_names:
            raise CalibrateError(f"{path}: no column {col!r} (columns: {', '.join(table.column_names)})")
    if table.num_rows == 0:
        raise CalibrateError(f"{path}: no rows")
    data = table.to_pydict()
    labels = []
    for i, raw in enumerate(data[label_column]):
        canon = LABEL_ALIASES.get(str(raw).strip().lower()) if raw is not None else None
        if canon is None:
            raise CalibrateError(f"{path}: row {i + 1}: unknown label {raw!r} in column {label_column!r} "
                                 f"(use compliance, refusal or partial)")
        labels.append(canon)
    texts = ["" if t is None else str(t) for t in data[text_column]]
    extra = {k: v for k, v in data.items() if k not in (text_column, label_column)}
    return LabelledSet(path=path, texts=texts, labels=labels, columns=extra)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:200]


# ---- metrics ---------------------------------------------------------------------------------------
def cohen_kappa(truth: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> float | None:
    """Cohen's kappa of two labelings over `classes` (None when chance agreement is 1)."""
    n = len(truth)
    if n == 0:
        return None
    observed = sum(t == p for t, p in zip(truth, pred)) / n
    ct, cp = Counter(truth), Counter(pred)
    expected = sum(ct[c] * cp[c] for c in classes) / (n * n)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def confusion(truth: Sequence[str], pred: Sequence[str], rows: Sequence[str], cols: Sequence[str]) -> dict:
    """{human label: {detector label: count}}."""
    out = {r: {c: 0 for c in cols} for r in rows}
    for t, p in zip(truth, pred):
        out[t][p] += 1
    return out


def binary_metrics(truth: Sequence[bool], pred: Sequence[bool], confidence: float = 0.95) -> dict:
    """Accuracy (Wilson interval), precision, recall, F1, kappa; refusal is the positive class."""
    t, p = np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool)
    tp, fp = int((t & p).sum()), int((~t & p).sum())
    fn, tn = int((t & ~p).sum()), int((~t & ~p).sum())
    n = tp + fp + fn + tn
    acc, lo, hi = wilson(tp + tn, n, confidence)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    names = ["refusal" if x else "compliance" for x in t], ["refusal" if x else "compliance" for x in p]
    return {"n": n, "accuracy": acc, "accuracy_ci": [lo, hi], "precision": precision, "recall": recall,
            "f1": f1, "kappa": cohen_kappa(*names, classes=("compliance", "refusal")),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def score(truth: Sequence[str], detections: Sequence[Detection], three_class: bool,
          confidence: float = 0.95) -> dict:
    """Every number calibrate reports for one detector (truth and predictions in canonical labels)."""
    pred = [d.label for d in detections]
    out = binary_metrics([t != "compliance" for t in truth], [d.refused for d in detections], confidence)
    binary_pred = ["compliance" if p == "compliance" else "refusal" for p in pred]
    out["confusion"] = confusion(truth, binary_pred if not three_class else pred, LABELS,
                                 LABELS if three_class else ("compliance", "refusal"))
    if three_class:
        k = sum(t == p for t, p in zip(truth, pred))
        acc3, lo3, hi3 = wilson(k, len(truth), confidence)
        out["accuracy_3class"], out["accuracy_3class_ci"] = acc3, [lo3, hi3]
        out["kappa_3class"] = cohen_kappa(truth, pred, LABELS)
    return out


def worst_errors(data: LabelledSet, detections: Sequence[Detection], k: int = 3,
                 rows: Sequence[int] | None = None) -> dict:
    """The `k` most confident false positives (human: compliance, detector: refused) and false negatives."""
    idx = list(rows) if rows is not None else list(range(len(data.texts)))
    fps = [i for i in idx if detections[i].refused and data.labels[i] == "compliance"]
    fns = [i for i in idx if not detections[i].refused and data.labels[i] != "compliance"]

    def show(i: int) -> dict:
        text = " ".join(data.texts[i].split())
        item = {"row": i + 1, "human": data.labels[i], "detector": detections[i].label,
                "confidence": round(detections[i].confidence, 3),
                "text": text if len(text) <= ERROR_TEXT_CHARS else text[: ERROR_TEXT_CHARS - 3] + "..."}
        if "model" in data.columns:
            item["model"] = data.columns["model"][i]
        return item

    def order(items: list[int]) -> list[dict]:
        return [show(i) for i in sorted(items, key=lambda i: (-detections[i].confidence, i))[:k]]

    return {"false_positives": order(fps), "false_negatives": order(fns)}


# ---- judges as detectors ----------------------------------------------------------------------------
class JudgeDetector:
    """An LLM judge prompt behind the Detector interface, through one cached ChatClient.

    Unjudged texts (unparseable after retries, or failed requests) are listed in `unjudged` after
    `detect` and left out of the scores; every raw reply is kept in `verdicts`.
    """

    def __init__(self, prompt_id: str, client: Any, max_attempts: int = 3, max_tokens: int = 16):
        from libra_ray.policy.judge_prompts import get_judge_prompt

        if prompt_id not in REFUSAL_JUDGES:
            raise CalibrateError(f"judge:{prompt_id} does not label refusals; use one of "
                                 f"{', '.join('judge:' + p for p in REFUSAL_JUDGES)}")
        self.prompt = get_judge_prompt(prompt_id)
        self.name = f"judge:{prompt_id}"
        self.client = client
        self.max_attempts = max_attempts
        self.max_tokens = max_tokens
        self.three_class = prompt_id.startswith("refusal_3class")
        self.unjudged: list[int] = []
        self.verdicts: list = []

    def detect(self, texts: Sequence[str]) -> list[Detection]:
        from libra_ray.bench.evaluate import _retry_params
        from libra_ray.llm.judge import judge_texts
        from libra_ray.policy.judge_prompts import refused_by_judge

        self.verdicts = judge_texts(self.client, self.prompt, list(texts), max_attempts=self.max_attempts,
                                    params={"max_tokens": self.max_tokens}, retry_params=_retry_params)
        self.unjudged = [i for i, v in enumerate(self.verdicts) if v.label is None]
        out = []
        for v in self.verdicts:
            if self.three_class:
                out.append(Detection(v.label or "compliance", 1.0 if v.label else 0.0))
            else:
                refused = refused_by_judge(self.prompt.id, v.label)
                out.append(Detection("refusal" if refused else "compliance", 1.0 if v.label else 0.0))
        return out


def judge_client(cfg: "PipelineConfig"):
    """The cached ChatClient on `bench.judge` (the cache is the bench's own: calibrate and bench share it)."""
    from libra_ray._config_base import join_uri
    from libra_ray.llm.client import ChatClient

    if not cfg.bench.judge.base_url:
        raise CalibrateError("judge detectors need an endpoint: set bench.judge.base_url (e.g. --set "
                             "bench.judge.base_url=http://127.0.0.1:8000/v1); the embedded tiny judge needs Ray "
                             "and is not used by calibrate")
    return ChatClient(cfg.bench.judge, cache_dir=join_uri(cfg.bench_dir, "judge_cache"))


def expand_detectors(names: Sequence[str], cfg: "PipelineConfig") -> list[str]:
    """Split comma lists, expand `all` (offline detectors; refusal judges when a judge URL is set), dedupe."""
    out: list[str] = []
    for item in names:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            if name == "all":
                out += offline_detector_names()
                if cfg.bench.judge.base_url:
                    out += [f"judge:{p}" for p in REFUSAL_JUDGES]
            else:
                out.append(name)
    return list(dict.fromkeys(out))


def build_detector(name: str, cfg: "PipelineConfig", client_holder: dict) -> Any:
    """A detector by name; judges share one client (`client_holder["client"]`)."""
    if name.startswith("judge:"):
        if "client" not in client_holder:
            client_holder["client"] = judge_client(cfg)
        return JudgeDetector(name[6:], client_holder["client"], max_attempts=cfg.bench.judge_max_attempts,
                             max_tokens=cfg.bench.judge.max_tokens)
    try:
        return get_detector(name)
    except (ValueError, FileNotFoundError) as err:
        raise CalibrateError(_one_line(err)) from None


# ---- calibrate ----------------------------------------------------------------------------------------
def calibrate(data: LabelledSet, detector_names: Sequence[str], cfg: "PipelineConfig", errors: int = 3) -> dict:
    """Run every detector on the labelled texts and score it; returns the JSON-able result."""
    from libra_ray.bench.transfer import coverage_curve, feature_cache_dir, transfer

    holder: dict = {}
    detectors = [build_detector(n, cfg, holder) for n in detector_names]
    confidence = cfg.bench.confidence
    labels_sha = _sha256_or_none(data.path)
    cache_dir = feature_cache_dir()
    for det in detectors:
        if hasattr(det, "cache_dir"):
            det.cache_dir = cache_dir
    results: dict[str, dict] = {}
    for det in detectors:
        t0 = time.perf_counter()
        print(f"[calibrate] {det.name}: {len(data.texts)} texts ...", file=sys.stderr, flush=True)
        found = det.detect(data.texts)
        seconds = time.perf_counter() - t0
        skip = set(getattr(det, "unjudged", []))
        rows = [i for i in range(len(found)) if i not in skip]
        three = bool(getattr(det, "three_class", False))
        entry = score([data.labels[i] for i in rows], [found[i] for i in rows], three, confidence)
        entry.update(seconds=round(seconds, 2), three_class=three, unjudged=len(skip),
                     worst_errors=worst_errors(data, found, errors, rows))
        if "model" in data.columns:
            entry["by_model"] = {
                m: binary_metrics([data.labels[i] != "compliance" for i in rows if data.columns["model"][i] == m],
                                  [found[i].refused for i in rows if data.columns["model"][i] == m], confidence)
                for m in sorted({str(x) for x in data.columns["model"]})}
        meta = _metadata_of(det)
        if meta and meta.get("training_sha256") == labels_sha:
            # Scoring a head on its own training file measures memory, not generalisation.
            entry["in_sample"] = {"note": "trained on this file", "cross_validation": meta.get("cross_validation"),
                                  "cross_model": meta.get("cross_model")}
        if not det.name.startswith("judge:"):
            moved = transfer(det, data, labels_sha, cache_dir)
            if moved["splits"]:
                entry["transfer"] = {k: v for k, v in moved.items() if k != "predictions"}
                if moved["learned"] and moved["predictions"]:
                    entry["coverage_curve"] = coverage_curve(moved["predictions"])
        results[det.name] = entry
    first = results[detectors[0].name]
    out = {"labels": data.path, "n": len(data.texts), "label_counts": dict(Counter(data.labels)),
           "accuracy": first["accuracy"], "detector": detectors[0].name, "detectors": results}
    if "client" in holder:
        out["judge_client"] = holder["client"].stats.as_dict()
    return out


def _metadata_of(detector: Any) -> dict | None:
    from libra_ray.bench.detector_info import _metadata

    return _metadata(detector)


def _sha256_or_none(path: str) -> str | None:
    from libra_ray.bench.classifier import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(result: dict) -> str:
    """The human-readable report of `calibrate`."""
    lines = [f"# Refusal detectors vs human labels: {result['labels']}", "",
             f"{result['n']} responses; labels {result['label_counts']}; partial counts as refusal for the binary "
             "score (refusal = positive class). `default` = the classifier head that ships with the project.", "",
             "| detector | accuracy [95% CI] | precision | recall | F1 | kappa | 3-class acc | kappa 3-class | "
             "unjudged | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["detectors"].items():
        lo, hi = r["accuracy_ci"]
        lines.append(f"| {name} | {_f(r['accuracy'])} [{_f(lo)}, {_f(hi)}] | {_f(r['precision'])} | "
                     f"{_f(r['recall'])} | {_f(r['f1'])} | {_f(r['kappa'])} | {_f(r.get('accuracy_3class'))} | "
                     f"{_f(r.get('kappa_3class'))} | {r['unjudged']} | {r['seconds']:.1f} |")
    for name, r in result["detectors"].items():
        if r.get("in_sample"):
            cv = (r["in_sample"].get("cross_validation") or {}).get("accuracy")
            lines += ["", f"**{name} was trained on this file: its row is in-sample.** Held-out accuracy "
                      f"(5-fold cross-validation on the training file): {_f(cv)}; cross-model: "
                      + ", ".join(f"{k} {_f(v.get('accuracy'))}" for k, v in (r["in_sample"].get("cross_model") or {}).items())
                      + "."]
    lines += transfer_markdown(result)
    for name, r in result["detectors"].items():
        cols = list(next(iter(r["confusion"].values())))
        lines += ["", f"## {name}", ""]
        if r.get("by_model"):
            lines.append("Accuracy by model: " + ", ".join(f"{m} {_f(b['accuracy'])}" for m, b in r["by_model"].items())
                         + ".")
            lines.append("")
        lines += ["| human \\ detector | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {h} | " + " | ".join(str(row[c]) for c in cols) + " |" for h, row in r["confusion"].items()]
        for kind, title in (("false_positives", "False positives (human: compliance)"),
                            ("false_negatives", "False negatives (human: refusal/partial)")):
            items = r["worst_errors"][kind]
            if items:
                lines += ["", f"{title}:"]
                lines += [f"- row {e['row']}" + (f" ({e['model']})" if "model" in e else "")
                          + f", {e['human']} -> {e['detector']} ({e['confidence']}): {e['text']}" for e in items]
    if "judge_client" in result:
        s = result["judge_client"]
        lines += ["", f"Judge client: {s['requests']} HTTP requests, {s['cache_hits']} cache hits."]
    return "\n".join(lines) + "\n"


def transfer_markdown(result: dict) -> list[str]:
    """The transfer table (leave-one-model-out, leave-one-prompt-type-out, gap) and the coverage curves."""
    moved = {n: r["transfer"] for n, r in result["detectors"].items() if r.get("transfer")}
    if not moved:
        return []
    names = list(next(iter(moved.values()))["splits"])
    lines = ["", "## Transfer: trained on one part, tested on the other", "",
             "Learned heads are re-fitted on the training side with their own recipe; rules fit nothing, so their "
             "number is their accuracy on the test side. Binary accuracy (3-class in brackets). gap = in-sample "
             "minus mean leave-one-model-out. Choose designs by these columns, not by in-sample.", "",
             "| detector | in-sample | " + " | ".join(names) + " | gap |", "|---" * (len(names) + 3) + "|"]

    def cell(v: dict | None) -> str:
        if not v:
            return "-"
        three = f" [{v['accuracy_3class']:.3f}]" if v.get("accuracy_3class") is not None else ""
        return f"{v['accuracy']:.3f}{three}"

    for name, t in moved.items():
        lines.append(f"| {name} | {cell(t['in_sample'])} | " + " | ".join(cell(t["splits"].get(k)) for k in names)
                     + f" | {_f(t['gap'])} |")
    for name, r in result["detectors"].items():
        if r.get("coverage_curve"):
            lines += ["", f"Cascade for {name} (from its leave-one-model-out predictions): rows sent to the judge "
                      "(decision confidence below the threshold) and the detector's accuracy on the rows it keeps.", "",
                      "| judge threshold | sent to judge | accuracy on the rest |", "|---|---|---|"]
            lines += [f"| {c['threshold']} | {c['sent_to_judge']:.1%} | {_f(c['accuracy_kept'])} |"
                      for c in r["coverage_curve"]]
    return lines


# ---- fit -----------------------------------------------------------------------------------------------
def _folds(data: LabelledSet, k: int, seed: int = 0) -> np.ndarray:
    """Fold index per row; rows with the same prompt share a fold (both models answered every prompt)."""
    groups = [str(g) for g in data.columns.get("prompt", range(len(data.texts)))]
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: i % k for i, j in enumerate(order)}
    return np.array([fold_of[g] for g in groups])


def code_version() -> dict:
    """What code made a head: package version, git commit, encoder and the feature code's version."""
    from libra_ray.bench.features import FEATURES_VERSION
    from libra_ray.embeddings import code_version as base

    return base(features_version=FEATURES_VERSION)


def fit(data: LabelledSet, out: str, command: str, l2: float = DEFAULT_L2, folds: int = 5,
        features_name: str = DEFAULT_FEATURES) -> dict:
    """Fit the head on every row, measure it honestly (grouped k-fold CV; leave-one-model-out and
    leave-one-prompt-type-out where the file allows), save weights + metadata; returns the metadata."""
    from libra_ray.bench.classifier import (CLASS_WEIGHT_POWER, SPECS, ClassifierDetector, features, fit_head,
                                            predict, save_head, sha256_file)
    from libra_ray.bench.transfer import coverage_curve, feature_cache_dir, transfer

    if features_name not in SPECS:
        raise CalibrateError(f"--features {features_name}: unknown; use one of {', '.join(SPECS)}")
    spec = SPECS[features_name]
    t0 = time.perf_counter()
    print(f"[calibrate] features for {len(data.texts)} texts ...", file=sys.stderr, flush=True)
    cache_dir = feature_cache_dir()
    x = features(data.texts, spec, cache_dir=cache_dir)
    truth = data.refused
    sha = sha256_file(data.path)

    def accuracy(train: np.ndarray, test: np.ndarray) -> dict:
        head = fit_head(x[train], [data.labels[i] for i in train], l2=l2, spec=spec)
        found = predict(head, x[test])
        correct = int((np.array([d.refused for d in found]) == truth[test]).sum())
        correct3 = sum(d.label == data.labels[i] for d, i in zip(found, test))
        return {"correct": correct, "correct_3class": correct3}

    cv = None
    if folds >= 2 and len(data.texts) >= 2 * folds:
        fold = _folds(data, folds)
        parts = [accuracy(np.where(fold != k)[0], np.where(fold == k)[0]) for k in range(folds)]
        acc, lo, hi = wilson(sum(r["correct"] for r in parts), len(data.texts))
        cv = {"folds": folds, "grouped_by": "prompt" if "prompt" in data.columns else "row",
              "accuracy": acc, "ci": [lo, hi],
              "accuracy_3class": sum(r["correct_3class"] for r in parts) / len(data.texts)}
    head = fit_head(x, data.labels, l2=l2, spec=spec)
    head.metadata = {"l2": l2, "class_weight_power": CLASS_WEIGHT_POWER}
    moved = transfer(ClassifierDetector(head), data, sha, cache_dir)
    head.metadata = {
        "training_file": os.path.basename(data.path), "training_sha256": sha,
        "rows": len(data.texts), "label_counts": dict(Counter(data.labels)), "command": command, "l2": l2,
        "features": features_name, "class_weight_power": CLASS_WEIGHT_POWER, "code_version": code_version(),
        "class_weighting": f"(n / (k * n_class)) ** {CLASS_WEIGHT_POWER}", "decision": "refused when P(refusal) + P(partial) >= 0.5",
        "accuracy_train": moved["in_sample"]["accuracy"], "cross_validation": cv,
        "cross_model": {k[len("model: "):]: v for k, v in moved["splits"].items() if k.startswith("model: ")},
        "transfer": moved["splits"], "gap": moved["gap"],
        "coverage_curve": coverage_curve(moved["predictions"]) if moved["predictions"] else None,
        "fit_seconds": round(time.perf_counter() - t0, 1),
    }
    if DOMAIN_SET.is_file():
        head.metadata["domain_check"] = domain_check(head)
    path = save_head(head, out)
    return {"out": str(path), **head.metadata}


# The in-repo domain set (tests/data/make_chem_answers.py): a fixed split that every shipped head records its
# accuracy on, so a test can check that the shipped weights still reproduce it (CI has no dev set).
DOMAIN_SET = Path(__file__).resolve().parents[2] / "tests" / "data" / "chem_answers.csv"
DOMAIN_SPLIT_EVERY = 4


def domain_check(head: Any, path: Path = DOMAIN_SET) -> dict:
    """The head's accuracy on every DOMAIN_SPLIT_EVERY-th row of the domain set (binary and 3-class)."""
    from libra_ray.bench.classifier import features, predict, sha256_file

    data = load_labelled(str(path))
    rows = list(range(0, len(data.texts), DOMAIN_SPLIT_EVERY))
    found = predict(head, features([data.texts[i] for i in rows], head.spec))
    correct = sum(d.refused == bool(data.refused[i]) for d, i in zip(found, rows))
    correct3 = sum(d.label == data.labels[i] for d, i in zip(found, rows))
    return {"file": "tests/data/" + path.name, "sha256": sha256_file(path), "split": f"every {DOMAIN_SPLIT_EVERY}th row from 0",
            "n": len(rows), "correct": int(correct), "correct_3class": int(correct3), "accuracy": correct / len(rows)}


# ---- CLI ---------------------------------------------------------------------------------------------
def add_calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", help="labelled file to score detectors on (CSV, JSONL or Parquet)")
    p.add_argument("--text-column", default="response", help="column with the response text (default: response)")
    p.add_argument("--label-column", default="label", help="column with the human label (default: label)")
    p.add_argument("--detector", action="append", default=[], metavar="NAME",
                   help="rule:paper|start|both|opening, classifier, classifier:PATH, judge:PROMPT_ID, default, "
                        "all (repeatable or a comma list; default: default)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the numbers as JSON")
    p.add_argument("--errors", type=int, default=3, help="worst false positives/negatives shown per detector")
    p.add_argument("--fit", metavar="LABELLED_FILE", help="train the classifier head on this labelled file")
    p.add_argument("--out", metavar="PATH", help="with --fit: where to save the head (.safetensors)")
    p.add_argument("--l2", type=float, default=DEFAULT_L2, help=f"with --fit: L2 penalty (default {DEFAULT_L2})")
    p.add_argument("--features", default=DEFAULT_FEATURES, metavar="NAME",
                   help=f"with --fit: what the head reads: acts, mean, mean+acts, rich (default {DEFAULT_FEATURES})")


def calibrate_from_args(args: argparse.Namespace, cfg: "PipelineConfig", argv: Sequence[str] | None = None) -> int:
    """The `calibrate` subcommand; bad input is one line on stderr and exit status 2."""
    try:
        if args.fit:
            if not args.out:
                raise CalibrateError("--fit needs --out PATH (where to save the head)")
            if not args.out.endswith(".safetensors"):
                raise CalibrateError(f"--out {args.out}: use a .safetensors path")
            data = load_labelled(args.fit, args.text_column, args.label_column)
            command = "libra-ray " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
            meta = fit(data, args.out, command, l2=args.l2, features_name=args.features)
            print(json.dumps(meta, indent=2))
            return 0
        if not args.labels:
            raise CalibrateError("give --labels FILE (to score detectors) or --fit FILE --out PATH (to train)")
        data = load_labelled(args.labels, args.text_column, args.label_column)
        names = expand_detectors(args.detector or ["default"], cfg)
        result = calibrate(data, names, cfg, errors=args.errors)
    except CalibrateError as err:
        print(f"libra-ray: {err}", file=sys.stderr)
        return 2
    print(markdown(result), end="")
    if args.json_path:
        try:
            with open(args.json_path, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2, default=str)
        except OSError as err:
            print(f"libra-ray: --json {args.json_path}: {err.strerror or err}", file=sys.stderr)
            return 2
    return 0
