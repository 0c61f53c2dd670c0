"""Refusal detectors behind one interface: rules, the local learned classifier, LLM judges.

    get_detector("rule:start").detect(["I can't help with that."]) -> [Detection(label="refusal", confidence=1.0)]

Labels follow the human-labelled refusal sets: `compliance`, `refusal`, `partial` (partial counts as a
refusal for the binary score). `confidence` is the detector's probability for its label (1.0 for rules).
Detector names: `rule:<name>` for every rule in `libra_ray.policy.rules.RULES`, `classifier` /
`classifier:PATH` (local embeddings + linear head), `default` (what `bench` uses offline), and
`judge:PROMPT_ID` (an LLM judge; built by `libra_ray.bench.calibrate.judge_detector`, it needs an endpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

LABELS: tuple[str, ...] = ("compliance", "refusal", "partial")


@dataclass(frozen=True)
class Detection:
    label: str  # one of LABELS
    confidence: float  # probability of `label`, 0..1 (1.0 for rules)
    # Every class's probability where the detector has them (the classifier); None for rules/judges.
    probabilities: dict[str, float] | None = field(default=None, compare=False, hash=False)

    @property
    def refused(self) -> bool:
        return self.label != "compliance"

    @property
    def p_refused(self) -> float:
        """Probability that the text is a (full or partial) refusal."""
        if self.probabilities is not None:
            return 1.0 - self.probabilities.get("compliance", 0.0)
        return self.confidence if self.refused else 1.0 - self.confidence


class Detector(Protocol):
    name: str

    def detect(self, texts: Sequence[str]) -> list[Detection]: ...


@dataclass
class RuleDetector:
    """A keyword/phrase rule as a detector (confidence 1; 3-class for `opening`, binary otherwise)."""

    rule: str

    @property
    def name(self) -> str:
        return f"rule:{self.rule}"

    @property
    def three_class(self) -> bool:
        return self.rule == "opening"

    def detect(self, texts: Sequence[str]) -> list[Detection]:
        from libra_ray.policy.rules import rule_label

        return [Detection(rule_label(t, self.rule), 1.0) for t in texts]


# What `bench` labels rows with when no LLM judge is asked, and what `calibrate --detector default` measures.
# The classifier head (embeddings + rule features) trained on the dev set: see libra_ray/bench/README.md for
# the numbers behind the choice.
DEFAULT_DETECTOR = "classifier"


def offline_detector_names() -> list[str]:
    """Every detector that runs offline (no endpoint): each rule, then the shipped classifier heads."""
    from libra_ray.policy.rules import RULES

    return [f"rule:{r}" for r in RULES] + ["classifier", "classifier:mean"]


def get_detector(name: str) -> Detector:
    """The detector called `name` (a clear ValueError naming the known ones otherwise).

    Offline: `rule:<rule>`, `classifier` (the shipped head), `classifier:PATH` (a head saved by
    `calibrate --fit`), `default`. Judges (`judge:PROMPT_ID`) need an endpoint and a cached client:
    build them with `libra_ray.bench.calibrate.judge_detector`.
    """
    from libra_ray.policy.rules import RULES

    if name == "default":
        detector = get_detector(DEFAULT_DETECTOR)
        if isinstance(getattr(type(detector), "name", None), property):
            return detector  # a rule keeps its own name
        detector.name = "default"  # type: ignore[misc]
        return detector
    if name.startswith("rule:") and name[5:] in RULES:
        return RuleDetector(name[5:])
    if name == "classifier" or name.startswith("classifier:"):
        from libra_ray.bench.classifier import ClassifierDetector, load_head

        path = name.partition(":")[2] or None
        return ClassifierDetector(load_head(path), name=name)
    known = [f"rule:{r}" for r in RULES] + ["classifier", "classifier:PATH", "default", "judge:PROMPT_ID"]
    raise ValueError(f"unknown detector {name!r}; known: {', '.join(known)}")
