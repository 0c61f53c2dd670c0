"""Refusal detectors behind one interface: rules, the local learned classifier, LLM judges.

    get_detector("rule:start").detect(["I can't help with that."]) -> [Detection(label="refusal", confidence=1.0)]

Labels follow the human-labelled refusal sets: `compliance`, `refusal`, `partial` (partial counts as a
refusal for the binary score). `confidence` is the detector's probability for its label (1.0 for rules).
Detector names: `rule:<name>` for every rule in `libra_ray.bench.rules.RULES`, `classifier` /
`classifier:PATH` (local embeddings + linear head), `default` (what `bench` uses offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

LABELS: tuple[str, ...] = ("compliance", "refusal", "partial")


@dataclass(frozen=True)
class Detection:
    label: str  # one of LABELS
    confidence: float  # probability of `label`, 0..1 (1.0 for rules)

    @property
    def refused(self) -> bool:
        return self.label != "compliance"


class Detector(Protocol):
    name: str

    def detect(self, texts: Sequence[str]) -> list[Detection]: ...


@dataclass
class RuleDetector:
    """A keyword/phrase rule as a detector (binary: compliance or refusal, confidence 1)."""

    rule: str

    @property
    def name(self) -> str:
        return f"rule:{self.rule}"

    def detect(self, texts: Sequence[str]) -> list[Detection]:
        from libra_ray.bench.rules import rule_refused

        return [Detection("refusal" if rule_refused(t, self.rule) else "compliance", 1.0) for t in texts]


def get_detector(name: str) -> Detector:
    """The detector called `name` (a clear ValueError naming the known ones otherwise)."""
    from libra_ray.bench.rules import RULES

    if name.startswith("rule:") and name[5:] in RULES:
        return RuleDetector(name[5:])
    known = [f"rule:{r}" for r in RULES]
    raise ValueError(f"unknown detector {name!r}; known: {', '.join(known)}")
