"""Stage 1 on Ray Data: balanced seed -> teacher paraphrases -> (prompt, chosen, rejected) triplets.

    phase 1 (driver)   seeds from the catalogue; seed request + seed responses from templates
    phase 2 (Ray Data) `TeacherStage` actors (map_batches, concurrency=synth.replicas) ask the teacher
                       for N paraphrases of each part, concurrently; safety gate; de-duplication
    phase 3 (Ray Data) flat_map: combination into triplets, labels flipped per class
    output             {dataset_dir}/train/*.parquet, test/*.parquet, README.md + card.json

Resumable for free: every teacher call goes through the content-addressed cache in
{run_dir}/teacher_cache, so a killed run restarts where it stopped and a re-run makes zero calls.
Per-row failures land in the `error` column of phase 2 (and in the card), never kill the job.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from typing import TYPE_CHECKING, Any

from libra_ray._config_base import join_uri
from libra_ray.policy.safety import actionable_reasons
from libra_ray.seeds import allocate, plan_seeds
from libra_ray.storage import filesystem
from libra_ray.synth import prompts as P
from libra_ray.synth.card import render_card  # noqa: F401 - re-exported (the card's Markdown lives there)
from libra_ray.synth.dedup import semantic_dedupe_rows
from libra_ray.synth.gate_judge import GateJudge, gate_judge_rows
from libra_ray.synth.prices import teacher_prices

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig
    from libra_ray.synth.config import SynthConfig

log = logging.getLogger(__name__)

PARTS = ("prompt", "chosen", "rejected")
# Client counters summed into the card (per batch; see TeacherStage).
CLIENT_COUNTERS = ("requests", "retries", "rate_limited", "server_errors", "timeouts", "malformed", "cache_hits",
                   "prompt_tokens", "completion_tokens")


# ---- phase 1 ----------------------------------------------------------------------------------
def split_compounds(compound_ids_by_class: dict[str, list[str]], test_fraction: float, seed: int,
                    categories: dict[str, str] | None = None) -> set[str]:
    """Test compound ids: `test_fraction` of each class (at least one, and never all, when a class has
    two or more compounds and test_fraction > 0). Deterministic by seed.

    With `categories` (compound id -> category) the test share of a class is spread over its categories
    in proportion to their sizes (largest remainder, as the sampler does), so every category is evaluated."""
    test: set[str] = set()
    for cls, ids in sorted(compound_ids_by_class.items()):
        ids = sorted(set(ids))
        if test_fraction <= 0 or len(ids) < 2:
            continue
        k = min(len(ids) - 1, max(1, round(test_fraction * len(ids))))
        if categories is None:
            test.update(random.Random(f"{seed}:split:{cls}").sample(ids, k))
            continue
        by_cat: dict[str, list[str]] = {}
        for i in ids:
            by_cat.setdefault(categories[i], []).append(i)
        for category, quota in allocate(k, {c: len(v) for c, v in by_cat.items()}).items():
            test.update(random.Random(f"{seed}:split:{cls}:{category}").sample(by_cat[category], quota))
    return test


def phase1_rows(synth: "SynthConfig") -> list[dict]:
    """One row per seed (compound x form; a TEXT-only compound has no SMILES row): identity, split, seed
    request and seed responses. The seeds come from `plan_seeds`, the same function the CLI checks first."""
    seeds = plan_seeds(synth)
    by_class: dict[str, list[str]] = {}
    for seed in seeds:
        by_class.setdefault(seed.cls, []).append(seed.compound_id)
    categories = {seed.compound_id: seed.category for seed in seeds}
    test_ids = split_compounds(by_class, synth.test_fraction, synth.seed, categories)
    rows = []
    for s in seeds:
        refusal = P.seed_refusal(s.subject, s.cls, s.category)
        if s.cls == "illegitimate":  # flip labels: refuse the illegitimate, answer the legitimate
            chosen, rejected = refusal, P.seed_compliance(s.subject)
        else:
            chosen, rejected = P.seed_helpful(s.subject, s.category), refusal
        rows.append({**s.to_row(), "seed_id": f"{s.compound_id}:{s.form}",
                     "split": "test" if s.compound_id in test_ids else "train",
                     "seed_prompt": P.seed_request(s.subject, s.form), "seed_chosen": chosen, "seed_rejected": rejected})
    return rows


def teacher_requests(row: dict, synth: "SynthConfig") -> list[tuple[str, list[dict], Any]]:
    """The three phase-2 teacher calls of a seed: (part, messages, validator)."""
    n = {"prompt": synth.n_prompt, "chosen": synth.n_chosen, "rejected": synth.n_rejected}
    out = [("prompt", P.paraphrase_request_messages(row["seed_prompt"], row["subject"], n["prompt"]),
            P.list_validator(n["prompt"], must_contain=row["subject"]))]
    if row["class"] == "illegitimate":
        out.append(("chosen", P.paraphrase_refusal_messages(row["seed_chosen"], n["chosen"]), P.list_validator(n["chosen"])))
        out.append(("rejected", P.paraphrase_compliance_messages(row["seed_rejected"], n["rejected"]),
                    P.list_validator(n["rejected"])))
    else:
        out.append(("chosen", P.helpful_answer_messages(row["seed_prompt"], n["chosen"]), P.list_validator(n["chosen"])))
        out.append(("rejected", P.paraphrase_refusal_messages(row["seed_rejected"], n["rejected"]),
                    P.list_validator(n["rejected"])))
    return out


# ---- phase 2 helpers ----------------------------------------------------------------------------
def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = normalise(text).split()
    return {tuple(words[i:i + 3]) for i in range(max(1, len(words) - 2))}


def dedupe(items: list[str], jaccard: float | None = None) -> tuple[list[str], int]:
    """Drop exact and normalised duplicates (and near-duplicates when `jaccard` is set); keeps order,
    so the seed text (#0) always survives. Returns (kept, removed)."""
    kept: list[str] = []
    seen: set[str] = set()
    shingles: list[set] = []
    for item in items:
        key = normalise(item)
        if key in seen:
            continue
        if jaccard is not None:
            sh = _shingles(item)
            if any(len(sh & other) / max(1, len(sh | other)) >= jaccard for other in shingles):
                continue
            shingles.append(sh)
        seen.add(key)
        kept.append(item)
    return kept, len(items) - len(kept)



def learned_gate_rows(rows: list[dict]) -> None:
    """Drop the illegitimate rows' teacher answers that the gate's learned check calls procedure-shaped
    (after the rules passed them), counted apart in `learned_gate_dropped`. One batched pass for the whole
    block. Requests (prompts) are not answers and item #0 is the seed's own template text: both are left."""
    from libra_ray.policy.gate_model import learned_actionable

    where = [(i, key, j) for i, row in enumerate(rows) if row["class"] == "illegitimate"
             for key in ("chosens", "rejecteds") for j in range(1, len(row[key]))]
    if not where:
        return
    flagged = learned_actionable([rows[i][key][j] for i, key, j in where])
    drop = {(i, key, j) for (i, key, j), f in zip(where, flagged) if f}
    for i, row in enumerate(rows):
        for key in ("chosens", "rejecteds"):
            kept = [t for j, t in enumerate(row[key]) if (i, key, j) not in drop]
            row["learned_gate_dropped"] += len(row[key]) - len(kept)
            row[key] = kept

class TeacherStage:
    """Ray Data actor: holds one ChatClient and turns seed rows into paraphrase lists (phase 2).

    An async callable class (`libra_ray.llm.stage`): Ray Data runs several batches per actor at once,
    all sharing the client's in-flight limit (`teacher.max_concurrency`), so the next batch's requests
    are queued while the last ones of the previous batch are out: no idle gap between batches, and the
    per-actor concurrency is not capped by one batch's size."""

    def __init__(self, synth_json: dict, base_url: str, cache_dir: str, limiter_name: str | None,
                 chemical_names: list[str]):
        from libra_ray.llm.client import ChatClient
        from libra_ray.llm.ratelimit import ClusterLimiter
        from libra_ray.synth.config import SynthConfig

        self.synth = SynthConfig.model_validate(synth_json)
        limiter = ClusterLimiter.by_name(limiter_name) if limiter_name else None
        self.client = ChatClient(self.synth.teacher, base_url=base_url, cache_dir=cache_dir, limiter=limiter)
        self.chemical_names = frozenset(chemical_names)
        self.gate_judge = GateJudge.from_config(self.synth, base_url, cache_dir)  # None unless synth.gate_judge

    async def __call__(self, batch):
        from libra_ray.llm.client import ClientStats

        rows = batch.to_pylist()
        calls = [(i, part, msgs, check) for i, row in enumerate(rows)
                 for part, msgs, check in teacher_requests(row, self.synth)]
        tally = ClientStats()  # this batch's counters (other batches run concurrently on the same client)
        results = await self.client.achat_many([c[2] for c in calls], validate=[c[3] for c in calls], tally=tally)
        yield self._rows(rows, calls, results, tally.as_dict())

    def _rows(self, rows: list[dict], calls: list, results: list, counters: dict):
        out = [dict(row, prompts=[row["seed_prompt"]], chosens=[row["seed_chosen"]], rejecteds=[row["seed_rejected"]],
                    error="", malformed_parts=0, safety_dropped=0, learned_gate_dropped=0, duplicates_removed=0,
                    teacher_calls=0,
                    prompt_tokens=0, completion_tokens=0)
               for row in rows]
        for (i, part, _, _), res in zip(calls, results):
            row = out[i]
            row["teacher_calls"] += 1
            row["prompt_tokens"] += res.prompt_tokens  # what the data cost (cached or not, malformed answers too)
            row["completion_tokens"] += res.completion_tokens
            if not res.ok:
                row["error"] += f"{'; ' if row['error'] else ''}{part}: {res.error}"
                row["malformed_parts"] += int(res.error.startswith("malformed"))
                continue
            items = P.parse_list(res.text) or []
            if row["class"] == "illegitimate":  # the safety gate: nothing actionable for these compounds
                safe = [t for t in items if not actionable_reasons(t, row["subject"], self.chemical_names)]
                row["safety_dropped"] += len(items) - len(safe)
                items = safe
            row[f"{part}s" if part != "chosen" else "chosens"].extend(items)
        learned_gate_rows(out)  # the learned check beside the rules: one batched encoder pass
        for row in out:
            for key in ("prompts", "chosens", "rejecteds"):
                row[key], removed = dedupe(row[key], self.synth.near_duplicate_jaccard)
                row["duplicates_removed"] += removed
        semantic_dedupe_rows(out, self.synth.semantic_dedup_threshold)  # paraphrases that say the same thing
        gate_judge_rows(out, self.gate_judge)  # the optional second safety check, after the rules and dedup
        # Client counters for this batch ride on its first row (sums stay exact).
        for key in CLIENT_COUNTERS:
            for j, row in enumerate(out):
                row[f"client_{key}"] = counters[key] if j == 0 else 0
        import pyarrow as pa

        return pa.Table.from_pylist(out)


def teacher_map_kwargs(synth: "SynthConfig") -> dict:
    """`map_batches` arguments that keep each TeacherStage actor's client full (3 requests per seed row;
    see `libra_ray.llm.stage.actor_pool_map_kwargs`)."""
    from libra_ray.llm.stage import actor_pool_map_kwargs

    return actor_pool_map_kwargs(synth.replicas, synth.batch_size, synth.teacher.max_concurrency, 3,
                                 synth.num_cpus)


# ---- phase 3 ----------------------------------------------------------------------------------
def combine(row: dict, rule: str) -> list[dict]:
    """Triplets of one seed. Test rows: one per unique prompt (benchmarks want unique prompts).
    Train rows: `paired` -> max(P, C, R), cycling the shorter lists; `product` -> P * C * R."""
    prompts, chosens, rejecteds = row["prompts"], row["chosens"], row["rejecteds"]
    if row["split"] == "test":
        combos = [(p, chosens[i % len(chosens)], rejecteds[i % len(rejecteds)]) for i, p in enumerate(prompts)]
    elif rule == "paired":
        n = max(len(prompts), len(chosens), len(rejecteds))
        combos = [(prompts[i % len(prompts)], chosens[i % len(chosens)], rejecteds[i % len(rejecteds)]) for i in range(n)]
    else:
        combos = [(p, c, r) for p in prompts for c in chosens for r in rejecteds]
    keep = ("compound_id", "name", "class", "category", "form", "subject", "seed_prompt", "split")
    return [{"prompt": p, "chosen": c, "rejected": r, **{k: row[k] for k in keep}} for p, c, r in combos]


def attack_triplets(row: dict, synth: "SynthConfig") -> list[dict]:
    """`synth.attack_augment`: wrapped variants of a train seed's prompts (wrappers of the trained families
    only), with the seed's own chosen and rejected answers; a wrapped prompt of an illegitimate seed must
    pass the safety gate like every other text. Deterministic by seed."""
    if not synth.attack_augment or row["split"] != "train" or not row["prompts"]:
        return []
    from libra_ray.policy.jailbreaks import wrap, wrapper_ids

    ids = wrapper_ids(synth.attack_train_families)
    rng = random.Random(f"{synth.seed}:attack:{row['compound_id']}:{row['form']}")
    chosens, rejecteds = row["chosens"], row["rejecteds"]
    keep = ("compound_id", "name", "class", "category", "form", "subject", "seed_prompt", "split")
    out = []
    for i in range(synth.attack_per_seed):
        wid = rng.choice(ids)
        text = wrap(wid, rng.choice(row["prompts"]))
        if row["class"] == "illegitimate" and actionable_reasons(text, row["subject"]):
            continue
        out.append({"prompt": text, "chosen": chosens[i % len(chosens)], "rejected": rejecteds[i % len(rejecteds)],
                    **{k: row[k] for k in keep}, "wrapper": wid})
    return out


def triplets(row: dict, synth: "SynthConfig") -> list[dict]:
    """Every triplet of one seed: `combine`, plus the wrapped ones under `synth.attack_augment` (then every
    triplet carries a `wrapper` column, None for a direct prompt)."""
    out = combine(row, synth.combination)
    if synth.attack_augment:
        out = [{**t, "wrapper": None} for t in out] + attack_triplets(row, synth)
    return out


# ---- the stage --------------------------------------------------------------------------------
def build_dataset(cfg: "PipelineConfig", base_url: str, *, progress: bool = True) -> dict:
    """Run phases 1-3 against the teacher at `base_url`; write the dataset and its card; return a summary."""
    import ray

    from libra_ray.llm.ratelimit import create_cluster_limiter
    from libra_ray.llm.stage import blocks_for
    from libra_ray.seeds import load_catalogue as _load

    synth = cfg.synth
    started = time.time()
    _quiet_ray_data(progress)
    seeds = phase1_rows(synth)
    cache_dir = join_uri(cfg.run_dir, "teacher_cache")
    limiter_name = create_cluster_limiter(synth.teacher, base_url)
    # Catalogue names count as reagents in the safety gate (short acronyms would match ordinary words).
    names = sorted({c.name.lower() for c in _load(synth.seeds_csv, check_smiles=False) if len(c.name) >= 4})
    phase2 = ray.data.from_items(seeds, override_num_blocks=blocks_for(len(seeds), synth.batch_size)).map_batches(
        TeacherStage, **teacher_map_kwargs(synth), fn_constructor_kwargs=dict(
            synth_json=synth.model_dump(mode="json"), base_url=base_url, cache_dir=cache_dir,
            limiter_name=limiter_name, chemical_names=names))

    rows = _collect_with_progress(phase2, len(seeds), enabled=progress)
    counts = _write_splits(rows, synth, cfg.dataset_dir)
    card = dataset_card(cfg, rows, counts, base_url, time.time() - started)
    write_card(cfg.dataset_dir, card)
    return {"dataset_dir": cfg.dataset_dir, "train_rows": counts["train"]["rows"], "test_rows": counts["test"]["rows"],
            "seeds": len(seeds), "teacher_requests": card["teacher"]["this_run"]["requests"], "errors": card["quality"]["seed_errors"],
            "safety_dropped": card["quality"]["safety_dropped"], "seconds": round(time.time() - started, 1)}


def _quiet_ray_data(progress: bool) -> None:
    """Our own progress bar says what matters (seeds, requests, retries, errors, tokens); Ray Data's
    per-operator bars and INFO logs would bury it."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _collect_with_progress(ds, total: int, enabled: bool) -> list[dict]:
    """Stream phase-2 rows to the driver, showing rows done, requests, retries, errors and tokens."""
    from tqdm import tqdm

    rows: list[dict] = []
    totals = dict.fromkeys(("requests", "retries", "errors", "tokens"), 0)
    with tqdm(total=total, desc="synth seeds", unit="seed", disable=not enabled, dynamic_ncols=True) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            chunk = batch.to_pylist()
            rows.extend(chunk)
            for row in chunk:
                totals["requests"] += row["client_requests"]
                totals["retries"] += row["client_retries"]
                totals["errors"] += bool(row["error"])
                totals["tokens"] += row["client_prompt_tokens"] + row["client_completion_tokens"]
            bar.set_postfix(totals, refresh=False)
            bar.update(len(chunk))
    rows.sort(key=lambda r: r["seed_id"])
    return rows


def _write_splits(rows: list[dict], synth: "SynthConfig", dataset_dir: str) -> dict:
    """Phase 3 on Ray Data: per split, flat_map the seeds into triplets and write fresh Parquet shards
    to {dataset_dir}/{split} (replacing an older run's). Returns the counts per split (computed from
    the same deterministic `combine`, so the card never needs another pass over the data)."""
    import pyarrow.fs as pafs
    import ray

    fs, base = filesystem(dataset_dir)
    counts = {}
    for split in ("train", "test"):
        path = f"{base}/{split}"
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)
        part = [r for r in rows if r["split"] == split]
        made = [t for r in part for t in triplets(r, synth)]
        counts[split] = _breakdown(made)
        if not made:
            fs.create_dir(path, recursive=True)
            continue
        blocks = max(1, min(len(part) // 64, 32))
        ds = ray.data.from_items(part, override_num_blocks=blocks).flat_map(
            lambda r: [{k: v for k, v in t.items() if k != "split"} for t in triplets(r, synth)],
            num_cpus=0.1)
        # A small CPU share like the flat_map: a default 1-CPU write task never fits on a 1-CPU node
        # that also hosts the embedded teacher's Serve replicas (a deadlock on small clusters).
        ds.write_parquet(join_uri(dataset_dir, split), max_rows_per_file=synth.rows_per_shard,
                         ray_remote_args={"num_cpus": 0.1})
    return counts


def _breakdown(triplets: list[dict]) -> dict:
    from collections import Counter

    def count(key):
        return dict(sorted(Counter(t[key] for t in triplets).items()))

    return {"rows": len(triplets), "unique_prompts": len({t["prompt"] for t in triplets}),
            "compounds": len({t["compound_id"] for t in triplets}), "by_class": count("class"),
            "by_category": count("category"), "by_form": count("form"),
            **({"by_wrapper": {k: v for k, v in Counter(t.get("wrapper") or "direct" for t in triplets).items()}}
               if any("wrapper" in t for t in triplets) else {})}


def dataset_card(cfg: "PipelineConfig", rows: list[dict], counts: dict, base_url: str, seconds: float) -> dict:
    synth, teacher = cfg.synth, cfg.synth.teacher
    this_run = {k: sum(r[f"client_{k}"] for r in rows) for k in CLIENT_COUNTERS}
    tokens = {k: sum(r[k] for r in rows) for k in ("prompt_tokens", "completion_tokens")}
    price_prompt, price_completion, _ = teacher_prices(teacher)  # the config's prices, else the price table
    cost = (tokens["prompt_tokens"] * price_prompt + tokens["completion_tokens"] * price_completion) / 1e6
    seeds_by_class: dict[str, int] = {}
    for r in rows:
        seeds_by_class[r["class"]] = seeds_by_class.get(r["class"], 0) + 1
    return {
        "name": f"libra_ray LibraChemQA-style preference data ({cfg.name})",
        "prompt_version": P.PROMPT_VERSION,
        # Dataset totals (tokens billed for every call, cached or not, malformed too) and what this run sent.
        "teacher": {"model": teacher.model, "endpoint": "embedded local server" if not teacher.base_url else _host(base_url),
                    "description": _teacher_description(teacher),
                    "calls": sum(r["teacher_calls"] for r in rows), **tokens, "cost_usd": round(cost, 6),
                    "this_run": this_run},
        "seeds": {"compounds": {"legitimate": synth.num_legitimate, "illegitimate": synth.num_illegitimate},
                  "forms": list(synth.forms), "by_class": seeds_by_class, "seed": synth.seed,
                  "catalogue": synth.seeds_csv or "shipped (libra_ray/seeds/catalogue.csv)"},
        "phase2": {"n_prompt": synth.n_prompt, "n_chosen": synth.n_chosen, "n_rejected": synth.n_rejected},
        "kept": _kept(rows, synth),
        "combination": synth.combination,
        "split": {"by": "compound", "test_fraction": synth.test_fraction, **counts},
        "quality": {"seed_errors": sum(bool(r["error"]) for r in rows),
                    "malformed_parts_dropped": sum(r["malformed_parts"] for r in rows),
                    "safety_dropped": sum(r["safety_dropped"] for r in rows),
                    "learned_gate_dropped": sum(r.get("learned_gate_dropped", 0) for r in rows),
                    "duplicates_removed": sum(r["duplicates_removed"] for r in rows),
                    "near_duplicate_jaccard": synth.near_duplicate_jaccard,
                    "semantic_duplicates_removed": sum(r.get("semantic_duplicates_removed", 0) for r in rows),
                    "semantic_dedup_threshold": synth.semantic_dedup_threshold,
                    **{k: sum(r.get(k, 0) for r in rows) for k in ("gate_judge_dropped", "gate_judge_unjudged", "gate_judge_calls")},
                    "gate_judge": f"{synth.gate_judge.model} (actionable_v1)" if synth.gate_judge else None},
        "seconds": round(seconds, 1),
    }


def _teacher_description(teacher) -> str | None:
    """Says so when the teacher is the offline stand-in (None for a real teacher)."""
    from libra_ray.synth.paraphraser import DESCRIPTION, OFFLINE_PARAPHRASER

    return DESCRIPTION if teacher.model == OFFLINE_PARAPHRASER and not teacher.base_url else None


def _kept(rows: list[dict], synth: "SynthConfig") -> dict:
    """Per part: asked per seed, the most there could be (seed text + asked, over all seeds) and what was kept."""
    asked = {"prompt": synth.n_prompt, "chosen": synth.n_chosen, "rejected": synth.n_rejected}
    return {part: {"asked_per_seed": asked[part], "possible": len(rows) * (1 + asked[part]),
                   "kept": sum(len(r[key]) for r in rows)}
            for part, key in (("prompt", "prompts"), ("chosen", "chosens"), ("rejected", "rejecteds"))}


def _host(url: str) -> str:
    """Scheme + host only: no path, query or userinfo (which could hold credentials)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def write_card(dataset_dir: str, card: dict) -> None:
    fs, base = filesystem(dataset_dir)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/card.json") as f:
        f.write(json.dumps(card, indent=2).encode())
    with fs.open_output_stream(f"{base}/README.md") as f:
        f.write(render_card(card).encode())


def load_dpo_dataset(dataset_dir: str, split: str = "train", conversational: bool = False):
    """The split as a `datasets.Dataset` for TRL's DPOTrainer: plain strings, or chat messages."""
    import glob

    from datasets import load_dataset

    files = sorted(glob.glob(f"{dataset_dir.removeprefix('file://')}/{split}/*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files under {dataset_dir}/{split}: run `libra-ray synth` first")
    ds = load_dataset("parquet", data_files=files, split="train")
    if conversational:
        ds = ds.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}],
                               "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]})
    return ds
