"""`libra-ray synth --dry-run`: what a synth run would sample, send and cost, without running it.

Nothing is started (no Ray, no teacher, no server): phase 1 runs on the driver exactly as in a real
run, and the teacher requests are built by the pipeline's own `teacher_requests`, so the counts can
never drift from what a run sends. Tokens use the client's estimator (`estimate_tokens`: ~4 characters
a token plus a few per message); the completion estimate assumes a paraphrase answer is N items as long
as the text it paraphrases (capped at max_tokens) and a helpful answer (legitimate seeds' chosen) fills
max_tokens, with an upper bound of max_tokens for every call.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig

SOURCE_TEXT = {"prompt": "seed_prompt", "chosen": "seed_chosen", "rejected": "seed_rejected"}


def synth_plan(cfg: "PipelineConfig") -> dict:
    """Seed counts, teacher calls, estimated tokens and cost of `libra-ray synth` for `cfg` (JSON-able)."""
    from libra_ray._config_base import ConfigError
    from libra_ray.llm.client import estimate_tokens
    from libra_ray.synth.pipeline import phase1_rows, teacher_requests
    from libra_ray.synth.prices import teacher_prices

    synth, teacher = cfg.synth, cfg.synth.teacher
    try:
        rows = phase1_rows(synth)
    except ValueError as err:  # e.g. more compounds asked for than the catalogue has
        raise ConfigError(f"synth: {err}") from None
    n_items = {"prompt": synth.n_prompt, "chosen": synth.n_chosen, "rejected": synth.n_rejected}
    calls = prompt_tokens = expected_completion = 0
    for row in rows:
        for part, messages, _ in teacher_requests(row, synth):
            calls += 1
            prompt_tokens += estimate_tokens(messages, 0)
            if part == "chosen" and row["class"] == "legitimate":  # open-ended helpful answers: assume they fill it
                expected_completion += teacher.max_tokens
                continue
            per_item = estimate_tokens([{"content": row[SOURCE_TEXT[part]]}], 0)
            expected_completion += min(teacher.max_tokens, n_items[part] * per_item + 2)
    max_completion = calls * teacher.max_tokens
    judge = _gate_judge_plan(rows, synth, n_items) if synth.gate_judge else None
    price_prompt, price_completion, price_source = teacher_prices(teacher)

    def cost(completion: int) -> float:
        return round((prompt_tokens * price_prompt + completion * price_completion) / 1e6, 2)

    per_seed = {"paired": 1 + max(n_items.values()), "product": (1 + synth.n_prompt) * (1 + synth.n_chosen) * (1 + synth.n_rejected)}
    split = Counter(r["split"] for r in rows)
    return {
        "seeds": len(rows),
        "compounds": {"legitimate": synth.num_legitimate, "illegitimate": synth.num_illegitimate},
        "forms": list(synth.forms),
        "by_class": dict(sorted(Counter(r["class"] for r in rows).items())),
        "by_form": dict(sorted(Counter(r["form"] for r in rows).items())),
        "by_category": dict(sorted(Counter(f"{r['class']}/{r['category']}" for r in rows).items())),
        "split_seeds": {"train": split["train"], "test": split["test"]},
        "split_compounds": {s: len({r["compound_id"] for r in rows if r["split"] == s}) for s in ("train", "test")},
        "teacher": {"model": teacher.model, "endpoint": teacher.base_url or "embedded local server",
                    "calls": calls, "calls_per_seed": calls // max(1, len(rows)), "paraphrases": n_items,
                    "max_malformed_retries": teacher.max_malformed_retries},
        "tokens": {"prompt": prompt_tokens, "completion_expected": expected_completion, "completion_max": max_completion},
        "cost_usd": {"expected": cost(expected_completion), "max": cost(max_completion),
                     "price_prompt_per_m": price_prompt, "price_completion_per_m": price_completion, "prices": price_source},
        "gate_judge": judge,
        # Before the safety gate and de-duplication drop anything.
        "triplets_at_most": {"train": split["train"] * per_seed[synth.combination], "test": split["test"] * (1 + synth.n_prompt)},
    }


def _gate_judge_plan(rows: list[dict], synth, n_items: dict) -> dict:
    """At most one judge call per paraphrase of an illegitimate seed (fewer after the gate and dedup)."""
    from libra_ray.llm.client import estimate_tokens
    from libra_ray.policy.judge_prompts import ACTIONABLE_V1
    from libra_ray.synth.prices import teacher_prices

    calls = prompt_tokens = 0
    for row in rows:
        if row["class"] != "illegitimate":
            continue
        for part, n in n_items.items():
            calls += n
            prompt_tokens += n * estimate_tokens(ACTIONABLE_V1.render(row[SOURCE_TEXT[part]]), 0)
    completion = calls * 2  # one word
    price_prompt, price_completion, source = teacher_prices(synth.gate_judge)
    return {"model": synth.gate_judge.model, "calls_at_most": calls, "prompt_tokens": prompt_tokens,
            "cost_usd_at_most": round((prompt_tokens * price_prompt + completion * price_completion) / 1e6, 2),
            "prices": source}


def format_plan(plan: dict, source: str) -> str:
    t, tok, cost = plan["teacher"], plan["tokens"], plan["cost_usd"]
    c = plan["compounds"]

    def counts(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items())

    # Mixtures and polymers have no structure: they are sampled for the TEXT form only.
    text_only = (c["legitimate"] + c["illegitimate"]) * len(plan["forms"]) - plan["seeds"]
    lines = [
        f"synth dry run ({source}): nothing started (no Ray, no teacher, no server)",
        f"seeds: {plan['seeds']} = ({c['legitimate']} legitimate + {c['illegitimate']} illegitimate compounds) "
        f"x {len(plan['forms'])} forms {'/'.join(plan['forms'])}"
        + (f" ({text_only} TEXT-only compounds have no SMILES seed)" if text_only else ""),
        f"  by class:    {counts(plan['by_class'])}",
        f"  by form:     {counts(plan['by_form'])}",
        "  by category: " + counts(plan["by_category"]),
        f"  split by compound: train {plan['split_seeds']['train']} seeds ({plan['split_compounds']['train']} compounds), "
        f"test {plan['split_seeds']['test']} seeds ({plan['split_compounds']['test']} compounds)",
        f"teacher: {t['model']} at {t['endpoint']}: {t['calls']} calls ({t['calls_per_seed']} per seed; paraphrases "
        f"{counts(t['paraphrases'])}); malformed answers re-asked up to {t['max_malformed_retries']} times (not counted)",
        f"tokens (estimated, ~4 chars/token): prompt {tok['prompt']:,}, completion ~{tok['completion_expected']:,} "
        f"(at most {tok['completion_max']:,} = max_tokens x calls)",
        f"cost: ~${cost['expected']:,.2f} (at most ${cost['max']:,.2f}) at ${cost['price_prompt_per_m']}/"
        f"${cost['price_completion_per_m']} per 1M prompt/completion tokens ({cost['prices']})",
        f"triplets: at most {plan['triplets_at_most']['train']:,} train, {plan['triplets_at_most']['test']:,} test "
        "(before the safety gate and de-duplication)",
    ]
    if plan["gate_judge"]:
        j = plan["gate_judge"]
        lines.append(f"gate judge: {j['model']}, at most {j['calls_at_most']:,} calls, ~{j['prompt_tokens']:,} prompt "
                     f"tokens, at most ${j['cost_usd_at_most']:,.2f} ({j['prices']})")
    return "\n".join(lines) + "\n"
