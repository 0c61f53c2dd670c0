"""The safety gate's learned check, beside the rules: is this text shaped like a procedure?

    learned_actionable(["Put A and the catalyst in the reactor, ..."]) -> array([True])

The rules in `libra_ray.policy.safety` catch quantities, conditions, enumerations and verb sequences; prose
procedures without those words ("mix them together, let it react, then purify"; equipment and conditions
without a listed verb; a named transformation then a second operation) slip past them. This check reads the
MiniLM embedding of the text (`libra_ray.embeddings.embed`, the model synth already loads for de-duplication)
with a logistic-regression head trained on labelled procedure / non-procedure texts written with placeholder
reagents (tests/data/gate_dev.jsonl + gate_train.jsonl), and flags texts with P(procedure) >= the head's
threshold. Batched: one encoder pass per batch of texts (synth calls it once per block of rows).

The head ships as `gate_head.safetensors` with its metadata (training files' sha256, code version, the
figures it measured on its held-out set, tests/data/gate_learned_heldout.jsonl, written before it). Re-fit:

    python -m libra_ray.policy.gate_model --fit
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

GATE_HEAD = Path(__file__).with_name("gate_head.safetensors")
MAX_LENGTH = 128
L2 = 1e-2
DATA = Path(__file__).resolve().parents[2] / "tests" / "data"
TRAIN_FILES = ("gate_dev.jsonl", "gate_train.jsonl")
HELDOUT_FILES = ("gate_learned_heldout.jsonl", "gate_heldout.jsonl")


def _features(texts: Sequence[str]) -> np.ndarray:
    from libra_ray.embeddings import embed

    return embed([t or " " for t in texts], max_length=MAX_LENGTH).astype(np.float64)


def _fit(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[np.ndarray, float]:
    """Class-balanced logistic regression (L-BFGS, float64, deterministic)."""
    import torch

    xt, yt = torch.tensor(x), torch.tensor(y, dtype=torch.float64)
    pos = float(yt.mean())
    sw = torch.where(yt > 0, 0.5 / pos, 0.5 / (1 - pos))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt, reduction="none") * sw).mean()
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach())


@functools.lru_cache(maxsize=2)
def load_gate_head(path: str | None = None) -> tuple[np.ndarray, float, float, dict]:
    """(weight, bias, threshold, metadata) of the shipped head (or `path`)."""
    from safetensors import safe_open

    p = Path(path) if path else GATE_HEAD
    if not p.is_file():
        raise FileNotFoundError(f"gate head not found: {p}")
    with safe_open(str(p), framework="numpy") as f:
        meta = json.loads((f.metadata() or {}).get("libra_ray", "{}"))
        weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
    return weight.astype(np.float64), float(bias[0]), float(meta["threshold"]), meta


def procedure_probability(texts: Sequence[str], path: str | None = None) -> np.ndarray:
    """P(procedure-shaped) per text, one batched encoder pass."""
    if not texts:
        return np.zeros(0)
    weight, bias, _, _ = load_gate_head(path)
    return 1.0 / (1.0 + np.exp(-(_features(texts) @ weight + bias)))


def learned_actionable(texts: Sequence[str], path: str | None = None) -> np.ndarray:
    """True where the learned check calls the text a procedure."""
    threshold = load_gate_head(path)[2]
    return procedure_probability(texts, path) >= threshold


def load_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def gate_scores(flagged: Sequence[bool], rows: Sequence[dict]) -> dict:
    """Recall on procedure-shaped texts and the share of vague/refusing texts that pass."""
    act = [f for f, r in zip(flagged, rows) if r["label"] == "actionable"]
    safe = [f for f, r in zip(flagged, rows) if r["label"] == "safe"]
    return {"recall": sum(act) / max(1, len(act)), "safe_pass": 1 - sum(safe) / max(1, len(safe)),
            "n_actionable": len(act), "n_safe": len(safe)}


def fit_gate(out: Path = GATE_HEAD, threshold: float = 0.5) -> dict:
    """Fit on TRAIN_FILES, measure rules, learned check and both on HELDOUT_FILES, save head + metadata."""
    from safetensors.numpy import save_file

    from libra_ray.policy.safety import actionable_reasons

    rows = [r for name in TRAIN_FILES for r in load_rows(name)]
    x = _features([r["text"] for r in rows])
    y = np.array([r["label"] == "actionable" for r in rows], dtype=np.float64)
    weight, bias = _fit(x, y)
    sha = hashlib.sha256()
    for name in TRAIN_FILES:
        sha.update((DATA / name).read_bytes())
    measured = {}
    for name in HELDOUT_FILES:
        held = load_rows(name)
        p = 1.0 / (1.0 + np.exp(-(_features([r["text"] for r in held]) @ weight + bias)))
        rules = [bool(actionable_reasons(r["text"], "compound X")) for r in held]
        measured[name] = {"rules": gate_scores(rules, held), "learned": gate_scores(list(p >= threshold), held),
                          "rules_or_learned": gate_scores([a or b for a, b in zip(rules, p >= threshold)], held)}
    p_train = 1.0 / (1.0 + np.exp(-(x @ weight + bias)))
    from libra_ray.embeddings import code_version

    meta = {"threshold": threshold, "l2": L2, "max_length": MAX_LENGTH, "training_files": list(TRAIN_FILES),
            "training_sha256": sha.hexdigest(), "rows": len(rows), "code_version": code_version(),
            "accuracy_train": float(((p_train >= threshold) == (y > 0)).mean()), "heldout": measured,
            "command": "python -m libra_ray.policy.gate_model --fit"}
    save_file({"weight": weight.astype(np.float32), "bias": np.array([bias], dtype=np.float32)}, str(out),
              metadata={"libra_ray": json.dumps(meta, sort_keys=True)})
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    load_gate_head.cache_clear()
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fit the safety gate's learned check on tests/data/gate_*.jsonl")
    p.add_argument("--fit", action="store_true", help="fit and write libra_ray/policy/gate_head.safetensors")
    p.add_argument("--threshold", type=float, default=0.5, help="P(procedure) at or above which a text is dropped")
    args = p.parse_args(argv)
    if not args.fit:
        p.print_help()
        return 2
    print(json.dumps(fit_gate(threshold=args.threshold), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
