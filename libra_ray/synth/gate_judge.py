"""Optional second safety check: an LLM judge reads each illegitimate row's texts after the rule gate.

Off by default (`synth.gate_judge: null`). When set, every paraphrase of an illegitimate seed that
survived the rules and the de-duplication (the seed texts, item #0, are ours and never judged) is
judged with the versioned prompt `actionable_v1` (`libra_ray.policy.judge_prompts`) through the
project's cached `ChatClient` (the teacher's cache folder: content-addressed, so a re-run judges nothing twice). A text the judge calls
ACTIONABLE is dropped, and so is one it leaves unjudged (fail closed); both are counted separately
from the rule gate in the dataset card.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from libra_ray.llm.judge import judge_texts
from libra_ray.policy.judge_prompts import ACTIONABLE_V1

if TYPE_CHECKING:
    from libra_ray.synth.config import SynthConfig

LIST_KEYS = ("prompts", "chosens", "rejecteds")
COUNTERS = ("gate_judge_dropped", "gate_judge_unjudged", "gate_judge_calls")


class GateJudge:
    """One cached ChatClient for the judge endpoint, created in each phase-2 actor."""

    def __init__(self, synth: "SynthConfig", base_url: str, cache_dir: str | None):
        from libra_ray.llm.client import ChatClient

        endpoint = synth.gate_judge
        self.client = ChatClient(endpoint, base_url=endpoint.base_url or base_url, cache_dir=cache_dir)
        self.max_attempts = 1 + endpoint.max_malformed_retries

    @classmethod
    def from_config(cls, synth: "SynthConfig", base_url: str, cache_dir: str | None) -> "GateJudge | None":
        """None when no judge is configured; `base_url` (the teacher's) is used when the judge sets none."""
        return cls(synth, base_url, cache_dir) if synth.gate_judge is not None else None

    def filter_rows(self, rows: list[dict]) -> None:
        """In place: drop the texts of illegitimate rows that the judge finds actionable or cannot judge."""
        todo = [(row, key, i) for row in rows if row["class"] == "illegitimate"
                for key in LIST_KEYS for i in range(1, len(row[key]))]
        if not todo:
            return
        verdicts = judge_texts(self.client, ACTIONABLE_V1, [row[key][i] for row, key, i in todo],
                               max_attempts=self.max_attempts, retry_params=lambda k: {"seed": k})
        drop: set[tuple[int, str, int]] = set()
        for (row, key, i), verdict in zip(todo, verdicts):
            row["gate_judge_calls"] += verdict.attempts
            if verdict.label != "safe":
                drop.add((id(row), key, i))
                row["gate_judge_dropped" if verdict.label == "actionable" else "gate_judge_unjudged"] += 1
        for row in rows:
            for key in LIST_KEYS:
                row[key] = [t for i, t in enumerate(row[key]) if (id(row), key, i) not in drop]


def gate_judge_rows(rows: list[dict], judge: GateJudge | None) -> None:
    """Zero the judge's counters on every row (a fixed schema), then judge when one is configured."""
    for row in rows:
        for key in COUNTERS:
            row[key] = 0
    if judge is not None:
        judge.filter_rows(rows)
