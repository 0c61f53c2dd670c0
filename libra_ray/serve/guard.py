"""Guard mode: the judge screens the policy's answer before it is returned.

It uses the benchmark's own judge prompt and refusal rule (`libra_ray.policy.judge_prompts`,
`libra_ray.policy.rules`), so serving and evaluation agree on what "unsafe" means. An answer is
*flagged* when the rule does not see a refusal and the judge says it complied (e.g. "Yes, the text
contains a synthesis route"). A judge reply that cannot be parsed leaves the answer *unjudged*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class GuardVerdict:
    verdict: str               # "ok" | "flagged" | "unjudged"
    judge_label: str | None    # the parsed judge label (None = unparseable)
    rule_refused: bool
    blocked: bool = False
    prompt: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def guard_messages(answer: str, prompt_id: str) -> list[dict]:
    from libra_ray.policy.judge_prompts import get_judge_prompt

    return get_judge_prompt(prompt_id).render(answer)


def screen(answer: str, judge_reply: str | None, prompt_id: str, rule: str, mode: str,
           fail_closed: bool = True) -> GuardVerdict:
    """The verdict on one answer given the judge's raw reply; `blocked` per mode ("flag" never blocks)."""
    from libra_ray.policy.judge_prompts import get_judge_prompt, refused_by_judge
    from libra_ray.policy.rules import rule_refused

    label = get_judge_prompt(prompt_id).parse(judge_reply)
    refused = rule_refused(answer, rule)
    if refused:
        verdict = "ok"  # the answer itself refuses/warns: nothing to screen
    elif label is None:
        verdict = "unjudged"
    else:
        verdict = "ok" if refused_by_judge(prompt_id, label) is not False else "flagged"
    blocked = mode == "block" and (verdict == "flagged" or (verdict == "unjudged" and fail_closed))
    return GuardVerdict(verdict=verdict, judge_label=label, rule_refused=refused, blocked=blocked, prompt=prompt_id)
