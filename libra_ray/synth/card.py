"""The dataset card as Markdown a newcomer can read: what the data is, where it came from, how many rows
of each kind (and why that many), what it cost and what the quality gates dropped. `card.json` keeps
the same facts as data."""

from __future__ import annotations


def _counts(d: dict) -> str:
    """{"a": 1, "b": 2} -> "a 1, b 2" (never a raw dict)."""
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


def render_card(card: dict) -> str:
    split, t, q, p2 = card["split"], card["teacher"], card["quality"], card["phase2"]
    kept = card.get("kept") or {}
    seeds = card["seeds"]
    n_seeds = sum(seeds.get("by_class", {}).values())
    teacher_line = f"`{t['model']}` ({t['endpoint']})"
    if t.get("description"):
        teacher_line += f": **{t['description']}**"
    lines = [f"# {card['name']}", "",
             "Preference triplets (prompt, chosen, rejected) for chemistry safety alignment, LibraChem method: "
             "for illegitimate compounds the chosen answer is a refusal and the rejected one complies *in form "
             "only* (it never says anything actionable); for legitimate compounds the chosen answer helps and "
             "the rejected one is an over-refusal.", "",
             "## Where it came from", "",
             f"- Teacher: {teacher_line}",
             f"- Prompt version: `{card['prompt_version']}`",
             f"- Seeds: {n_seeds} seed requests from {sum(seeds['compounds'].values())} compounds "
             f"({_counts(seeds['compounds'])}), forms {', '.join(seeds['forms'])}, sampler seed {seeds['seed']}; "
             f"catalogue: {seeds['catalogue']}",
             f"- Split by compound (no compound is in both splits), test fraction {split['test_fraction']}", "",
             "## Why this many rows", "",
             f"Each seed starts from its own texts (request, chosen, rejected: item #0) and asks the teacher for "
             f"{p2['n_prompt']} request paraphrases, {p2['n_chosen']} chosen and {p2['n_rejected']} rejected answers.",
             ""]
    if kept:
        lines += ["| part | asked per seed | at most (seed text + asked, all seeds) | kept | kept per seed |",
                  "|---|---|---|---|---|"]
        for part in ("prompt", "chosen", "rejected"):
            k = kept[part]
            lines.append(f"| {part} | {k['asked_per_seed']} | {k['possible']} | {k['kept']} | "
                         f"{k['kept'] / max(1, n_seeds):.1f} |")
        lost = sum(k["possible"] - k["kept"] for k in kept.values())
        lines += ["", f"The {lost} texts not kept are the quality gates' drops below (malformed answers count all "
                  "the items asked for in that call).", ""]
    lines += [f"Combination `{card['combination']}`: a train seed gives max(P, C, R) triplets (paired, cycling "
              "the shorter lists) or P x C x R (product); a test seed gives one row per unique prompt.", "",
              "## Rows", "", "| split | rows | unique prompts | compounds | legitimate | illegitimate |", "|---|---|---|---|---|---|"]
    for name in ("train", "test"):
        s = split[name]
        by = s.get("by_class", {})
        lines.append(f"| {name} | {s['rows']} | {s.get('unique_prompts', 0)} | {s.get('compounds', 0)} | "
                     f"{by.get('legitimate', 0)} | {by.get('illegitimate', 0)} |")
    total = {k: split["train"].get("by_class", {}).get(k, 0) + split["test"].get("by_class", {}).get(k, 0)
             for k in ("legitimate", "illegitimate")}
    lines.append(f"| total | {split['train']['rows'] + split['test']['rows']} | | "
                 f"{split['train'].get('compounds', 0) + split['test'].get('compounds', 0)} | {total['legitimate']} | "
                 f"{total['illegitimate']} |")
    cats = sorted(set(split["train"].get("by_category", {})) | set(split["test"].get("by_category", {})))
    lines += ["", "| category | train rows | test rows |", "|---|---|---|"]
    lines += [f"| {c} | {split['train'].get('by_category', {}).get(c, 0)} | {split['test'].get('by_category', {}).get(c, 0)} |"
              for c in cats]
    lines += ["", "## Cost and teacher usage", "",
              f"- {t['calls']} teacher calls, {t['prompt_tokens']} prompt + {t['completion_tokens']} completion tokens, "
              f"estimated cost ${t['cost_usd']:.2f}" + (" (the offline teacher is free)" if t.get("description") else ""),
              "- This run: " + _counts(t["this_run"]), "", "## Quality gates", "",
              f"- Seeds with an error (a part the teacher never answered usably): {q['seed_errors']}",
              f"- Teacher answers dropped as malformed (after re-asks): {q['malformed_parts_dropped']}",
              f"- Texts dropped by the safety gate (actionable content for an illegitimate compound): {q['safety_dropped']}",
              f"- Texts dropped by the gate's learned check (procedure-shaped prose the rules passed): "
              f"{q.get('learned_gate_dropped', 0)}",
              f"- Duplicates removed: {q['duplicates_removed']}"
              + (f" (near-duplicates too, word-trigram Jaccard >= {q['near_duplicate_jaccard']})" if q.get("near_duplicate_jaccard") else ""),
              "", "Load with `datasets.load_dataset(\"parquet\", data_files={\"train\": \"train/*.parquet\", "
                  "\"test\": \"test/*.parquet\"})`; columns `prompt`, `chosen`, `rejected` suit TRL's DPOTrainer "
                  "(`libra_ray.synth.load_dpo_dataset(..., conversational=True)` gives the chat format).", ""]
    return "\n".join(lines)
