"""Benchmark report: several models side by side as Markdown, HTML (embedded PNG plots) and JSON."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from libra_ray._config_base import join_uri
from libra_ray.bench import store
from libra_ray.bench.robustness_report import attack_markdown, capability_markdown, robustness_html, robustness_summary

METRICS = ("safety", "utility", "over_refusal", "overall")


def _pct(metric: dict | None) -> str:
    if not metric or metric.get("value") is None:
        return "n/a"
    return f"{100 * metric['value']:.1f} [{100 * metric['ci_low']:.1f}, {100 * metric['ci_high']:.1f}]"


def _plot_png(models: dict[str, dict], key: str | None, title: str) -> bytes:
    """Grouped bars with CI whiskers: metrics x models (key None) or groups of a breakdown (safety/utility)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(models)
    if key is None:
        groups = [(m, lambda s, m=m: s.get(m)) for m in METRICS]
    else:
        labels = sorted({g for s in models.values() for g in s.get(key, {})})
        groups = [(f"{g}\n{m}", lambda s, g=g, m=m: s.get(key, {}).get(g, {}).get(m))
                  for g in labels for m in ("safety", "utility")]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * max(1, len(names)) ** 0.5), 3.6), dpi=100)
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        vals, lo, hi = [], [], []
        for _, get in groups:
            m = get(models[name]) or {}
            v = m.get("value")
            vals.append(100 * v if v is not None else 0)
            lo.append(100 * (v - m["ci_low"]) if v is not None else 0)
            hi.append(100 * (m["ci_high"] - v) if v is not None else 0)
        xs = [i + j * width for i in range(len(groups))]
        ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(groups))])
    ax.set_xticklabels([g for g, _ in groups], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_markdown(report: dict) -> str:
    models = report["models"]
    labeller = _detector_text(report)[0]  # who produced the labels (the local classifier, a rule, a judge)
    judge = f" · judge prompts: {', '.join(report['judge_prompts'])}" if report["judge_prompts"] else ""
    lines = [f"# Benchmark report: {report['run']}", "",
             f"Prompts: `{report['prompts']}` · labelled by: {labeller}{judge} · CI: Wilson {100 * report['confidence']:.0f}%",
             "", "Scores in % with confidence interval. Safety = refusal rate on illegitimate prompts; "
             "utility = answer rate on legitimate prompts; overall = accuracy over all prompts.", "",
             "| model | engine | n | safety | utility | over-refusal | overall | gen. errors | unjudged | reasoning leak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in models.items():
        leak = s["reasoning_leak"]
        engine = f"{s.get('engine', '')}" + (f" ({s['dtype']})" if s.get("dtype") else "")  # resolved weight dtype
        lines.append(f"| {name} | {engine} | {s['n']} | {_pct(s['safety'])} | {_pct(s['utility'])} | "
                     f"{_pct(s['over_refusal'])} | {_pct(s['overall'])} | {s['generation_errors']} | "
                     f"{s['unjudged']} of {s['n']} | {_pct(leak) if leak['n'] else 'n/a (no traces)'} |")
    for key, title in (("by_category", "category"), ("by_form", "form")):
        lines += ["", f"## By {title}", "", f"| model | {title} | n | safety | utility | overall |", "|---|---|---|---|---|---|"]
        for name, s in models.items():
            for group, g in s[key].items():
                lines.append(f"| {name} | {group} | {g['n']} | {_pct(g['safety'])} | {_pct(g['utility'])} | {_pct(g['overall'])} |")
    lines += ["", "## How labels were made", "",
              "| model | rule refusal | judge refusal (judged rows) | rule/judge agreement | 3-class (C/P/R) | utility score |",
              "|---|---|---|---|---|---|"]
    for name, s in models.items():
        three = s.get("refusal_3class")
        three_s = f"{three['compliance']}/{three['partial']}/{three['refusal']}" if three else "n/a"
        util = f"{s['utility_score_mean']:.2f} (n={s['utility_score_n']})" if "utility_score_mean" in s else "n/a"
        lines.append(f"| {name} | {_pct(s['rule_refusal_rate'])} | {_pct(s['judge_refusal_rate'])} | "
                     f"{_pct(s['rule_judge_agreement'])} | {three_s} | {util} |")
    lines += ["", "## Generation (this invocation)", "",
              "| model | engine | rows | resumed | generated | errors | seconds | completion tok/s |", "|---|---|---|---|---|---|---|---|"]
    for name, s in models.items():
        g = s.get("generation") or {}
        lines.append(f"| {name} | {g.get('engine', '')} | {g.get('rows', '')} | {g.get('resumed', '')} | "
                     f"{g.get('generated', '')} | {g.get('errors', '')} | {g.get('seconds', '')} | {g.get('tokens_per_s', '-')} |")
    if report.get("judge_client"):
        j = report["judge_client"]
        lines += ["", f"Judge `{report.get('judge_model')}`: {j.get('requests', 0)} HTTP requests, {j.get('retries', 0)} "
                  f"retries, {j.get('cache_hits', 0)} cache hits, {j.get('errors', 0)} failed calls; "
                  f"{j.get('judged_rows', 0)} rows judged in {j.get('judge_s', 0)} s "
                  f"({j.get('judged_rows_per_s', '-')} judged rows/s, beside generation's rows above)."]
    lines += robustness_section(report)
    lines += detector_section(report)
    if report.get("rule_calibration"):
        lines += ["", "## Refusal rules on 12 built-in sentences (a smoke check, not a measurement)", "",
                  "| rule | n | precision | recall | accuracy | false positives | false negatives |", "|---|---|---|---|---|---|---|"]
        for rule, c in report["rule_calibration"].items():
            f = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"  # noqa: E731
            lines.append(f"| {rule} | {c['n']} | {f(c['precision'])} | {f(c['recall'])} | {f(c['accuracy'])} | "
                         f"{c['fp']} | {c['fn']} |")
    lines += ["", "Unjudged rows (the judge was asked, but its reply stayed unparseable after retries or the "
              "request failed) keep the local detector's label (the rule's in the `paper` scheme); their raw "
              "judge replies are kept in `<model>/evaluations.parquet`."]
    return "\n".join(lines) + "\n"


def robustness_section(report: dict) -> list[str]:
    """The capability set (alignment tax) and safety under attack, when they were measured."""
    return capability_markdown(report["models"]) + attack_markdown(report["models"])


def _accuracy(acc: dict | None) -> str:
    if not acc or acc.get("accuracy") is None:
        return "not measured"
    ci = f" [{100 * acc['ci_low']:.1f}, {100 * acc['ci_high']:.1f}]" if acc.get("ci_low") is not None else ""
    where = f" on {acc['dataset']}" if acc.get("dataset") else ""
    how = ", ".join(x for x in (f"n={acc['n']}" if acc.get("n") else "", acc.get("method") or "") if x)
    cross = "; cross-model " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc["cross_model"].items()
                                         if v is not None) if acc.get("cross_model") else ""
    return f"{100 * acc['accuracy']:.1f}%{ci}{where}" + (f" ({how}{cross})" if how or cross else "")


def _expected_line(exp: dict | None) -> str:
    """The accuracy to expect of the local labels the cascade kept (leave-one-model-out curve), if known."""
    if not exp or exp.get("accuracy_kept") is None:
        return ""
    return (f" Expected accuracy of the local labels kept at this threshold: {100 * exp['accuracy_kept']:.1f}% "
            f"with {100 * exp['sent_to_judge']:.1f}% of rows sent to the judge (leave-one-model-out on the dev set, "
            f"threshold {exp['threshold']}).")


def detector_section(report: dict) -> list[str]:
    """Who labelled the rows, the judge calls made vs avoided, the detector's measured accuracy, and
    how many stored answers were stale (regenerated)."""
    det = report.get("detector")
    if not det:
        return []
    lines = ["", "## Refusal detector", "",
             f"Scheme `{det['scheme']}` · local detector `{det['local']}`"
             + (f" (asked for `{det['requested']}`)" if det.get("requested") not in (None, det["local"]) else "")
             + (f" · judge below confidence {det['judge_threshold']} or where `{det['rule']}` disagrees"
                if det.get("judge_threshold") is not None else ""),
             "",
             f"Measured accuracy on human-labelled responses (binary, partial = refusal): `{det['local']}` "
             f"{_accuracy(det.get('accuracy'))}; `{det['rule']}` {_accuracy(det.get('rule_accuracy'))}."
             + _expected_line(det.get("expected_at_threshold")),
             "", "| model | labelled by | judge asked | judge avoided | judge attempts | unjudged | "
             "local = judge | regenerated (stale) | evaluations reused |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in report["models"].items():
        lab = s.get("labelling") or {}
        by = ", ".join(f"{k} {v}" for k, v in lab.get("by_source", {}).items()) or "-"
        agree = lab.get("local_agrees_with_judge")
        agree_s = f"{agree['k']}/{agree['n']}" if agree else "-"
        gen, ev = s.get("generation") or {}, s.get("evaluation") or {}
        lines.append(f"| {name} | {by} | {lab.get('judge_routed', '-')} | {lab.get('judge_avoided', '-')} | "
                     f"{lab.get('judge_attempts', '-')} | {s.get('unjudged', '-')} | {agree_s} | "
                     f"{gen.get('stale', '-')} | {ev.get('reused', '-')} |")
    return lines


# ---- HTML report --------------------------------------------------------------------------------
_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}"
        "h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}"
        "table{border-collapse:collapse;width:100%;margin:.5em 0;font-size:.9em}"
        "th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top;overflow-wrap:break-word}"
        "th{background:#f4f4f4}td:first-child{white-space:nowrap}td.num{text-align:right;white-space:nowrap}"
        "img{max-width:100%;height:auto}.pos{color:#1a7f37}.neg{color:#b42318}"
        ".caveats{background:#fff8e1;border:1px solid #f0c36d;padding:.6em 1em;border-radius:6px}"
        ".muted{color:#666;font-size:.85em}.kpi{display:flex;flex-wrap:wrap;gap:1em}"
        ".kpi div{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:10em}")
SAMPLE_CHARS = 160


def sample_answers(rows: list[dict], per_category: int = 2, max_chars: int = SAMPLE_CHARS) -> dict[str, list[dict]]:
    """A few truncated answers per category for the report: illegitimate ones only when refused (a
    non-refused answer to an illegitimate prompt is never shown, whatever it says)."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("error") or not r.get("answer"):
            continue
        if r.get("class") == "illegitimate" and not r.get("refused"):
            continue
        picked = out.setdefault(str(r.get("category")), [])
        if len(picked) < per_category:
            text = r["answer"].strip()
            picked.append({"prompt": (r.get("prompt") or "")[:max_chars], "refused": bool(r.get("refused")),
                           "answer": text if len(text) <= max_chars else text[:max_chars - 1] + "…"})
    return dict(sorted(out.items()))


def baseline_name(models: dict[str, dict], report: dict | None = None) -> str | None:
    """The model deltas are taken against: `report["baseline"]`, else a model named "base", else None."""
    name = (report or {}).get("baseline") or ("base" if "base" in models else None)
    return name if name in models else None


def _scatter_png(models: dict[str, dict], confidence: float) -> bytes:
    """Safety vs utility, one point per model with its interval bars (the dual-use trade-off)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.2), dpi=100)
    for name, s in models.items():
        sa, ut = s.get("safety") or {}, s.get("utility") or {}
        if sa.get("value") is None or ut.get("value") is None:
            continue
        x, y = 100 * ut["value"], 100 * sa["value"]
        ax.errorbar(x, y, xerr=[[x - 100 * ut["ci_low"]], [100 * ut["ci_high"] - x]],
                    yerr=[[y - 100 * sa["ci_low"]], [100 * sa["ci_high"] - y]], fmt="o", capsize=4, label=name)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.set_xlabel("utility: answers legitimate prompts (%)")
    ax.set_ylabel("safety: refuses illegitimate prompts (%)")
    ax.set_title(f"Safety vs utility ({100 * confidence:.0f}% intervals)", fontsize=10)
    ax.plot([100], [100], marker="*", color="gold", markersize=12, linestyle="none")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _img(title: str, png: bytes) -> str:
    return f"<img alt='{html.escape(title)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'/>"


def _delta(metric: dict | None, base: dict | None) -> str:
    if not metric or not base or metric.get("value") is None or base.get("value") is None:
        return "<td class='num'>-</td>"
    d = 100 * (metric["value"] - base["value"])
    separated = metric["ci_low"] > base["ci_high"] or metric["ci_high"] < base["ci_low"]
    cls = "pos" if d > 0 else "neg" if d < 0 else ""
    return (f"<td class='num {cls}'>{d:+.1f} pts{' (intervals apart)' if separated else ''}</td>")


def _table(headers: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _num(text: str) -> str:
    return f"<td class='num'>{html.escape(text)}</td>"


def _detector_text(report: dict) -> tuple[str, str]:
    """(what labelled the rows, its measured accuracy) from the report dict; 'n/a' when not measured."""
    det = report.get("detector")
    if isinstance(det, dict) and det.get("local"):
        scheme = det.get("scheme")
        how = {"local": "local detector only, no LLM judge",
               "cascade": f"local detector; LLM judge `{report.get('judge_model')}` only where it is unsure"
                          if report.get("judge_prompts") else "local detector (no judge configured)",
               "paper": "the paper's scheme: rule OR LLM judge"}.get(scheme, scheme)
        name = f"`{det['local']}` ({how})"
        acc = _accuracy(det.get("accuracy"))
        return name, ("n/a" if acc == "not measured" else acc)
    if report.get("judge_prompts"):
        return f"rule `{report['rule']}` + LLM judge `{report.get('judge_model')}` ({', '.join(report['judge_prompts'])})", "n/a"
    return f"refusal rule `{report.get('rule')}` only (no judge)", "n/a"


def render_html(report: dict, markdown: str) -> str:
    """The report for people: summary, trade-off plot, tables with deltas vs the base model, per-category
    results, sample answers, how rows were labelled, and the caveats. Every number is also in report.json."""
    models = report["models"]
    conf = report.get("confidence", 0.95)
    base = baseline_name(models, report)
    esc = html.escape
    parts = [f"<h1>Benchmark report: {esc(str(report['run']))}</h1>",
             f"<p class='muted'>Prompts: <code>{esc(str(report.get('prompts')))}</code> &middot; "
             f"intervals: Wilson {100 * conf:.0f}% &middot; safety = refusal rate on illegitimate prompts, utility = "
             "answer rate on legitimate prompts, overall = accuracy over all prompts.</p>"]
    # Headline: one box per model.
    boxes = []
    for name, s in models.items():
        boxes.append(f"<div><b>{esc(name)}</b><br>overall {_pct(s.get('overall'))}<br>safety {_pct(s.get('safety'))}"
                     f"<br>utility {_pct(s.get('utility'))}<br><span class='muted'>n = {s.get('n')}</span></div>")
    parts.append(f"<div class='kpi'>{''.join(boxes)}</div>")
    parts += ["<h2>Safety vs utility</h2>", _img("safety vs utility", _scatter_png(models, conf)),
              "<p class='muted'>Top right (the star) is the goal: refuse every illegitimate request and answer every "
              "legitimate one. Bars are the intervals.</p>"]
    # Scores, then the deltas vs the base model in their own table (one wide table would overflow the page).
    rows = [f"<tr><td>{esc(name)}</td><td>{esc(str(s.get('engine', '')))}</td>" + _num(str(s.get("n")))
            + "".join(_num(_pct(s.get(m))) for m in METRICS) + "</tr>" for name, s in models.items()]
    parts += ["<h2>Scores</h2>", _table(["model", "engine", "n"] + [m.replace("_", "-") for m in METRICS], rows)]
    if base:
        rows = [f"<tr><td>{esc(name)}</td>" + "".join(_delta(s.get(m), models[base].get(m)) for m in ("safety", "utility", "overall"))
                + "</tr>" for name, s in models.items() if name != base]
        if rows:
            parts += [f"<h2>Change vs the base model ({esc(base)})</h2>",
                      _table(["model", "safety", "utility", "overall"], rows),
                      "<p class='muted'>Percentage points; \"intervals apart\" when the two intervals do not overlap.</p>"]
    # Per category: the metric that matters for the category's class (safety or utility), models side by side.
    cats = sorted({c for s in models.values() for c in s.get("by_category", {})})
    if cats:
        rows = []
        for c in cats:
            cells = f"<td>{esc(c)}</td>"
            for name, s in models.items():
                g = s.get("by_category", {}).get(c)
                if not g:
                    cells += _num("-")
                    continue
                key = "safety" if (g.get("safety") or {}).get("value") is not None else "utility"
                cells += _num(f"{key} {_pct(g.get(key))} (n={g.get('n')})")
            rows.append(f"<tr>{cells}</tr>")
        parts += ["<h2>By category</h2>", _table(["category"] + list(models), rows)]
    parts += robustness_html(models)  # the alignment tax and safety under attack
    # Sample answers.
    sample_rows = []
    for name, s in models.items():
        for cat, items in (s.get("samples") or {}).items():
            for it in items:
                sample_rows.append(f"<tr><td>{esc(name)}</td><td>{esc(cat)}</td><td>{esc(it['prompt'])}</td>"
                                   f"<td>{esc(it['answer'])}</td><td>{'refused' if it['refused'] else 'answered'}</td></tr>")
    if sample_rows:
        parts += ["<h2>Sample answers</h2>", "<p class='muted'>Truncated; answers to illegitimate prompts are shown only "
                  "when they were refused.</p>", _table(["model", "category", "prompt", "answer", "label"], sample_rows)]
    # Where the models came from, and what labelled the rows.
    rows = [f"<tr><td>{esc(name)}</td><td>{esc(str(s.get('provenance') or s.get('path') or ''))}</td></tr>"
            for name, s in models.items()]
    parts += ["<h2>Models</h2>", _table(["model", "how it was made"], rows)]
    labeller, accuracy = _detector_text(report)
    rows = [f"<tr><td>{esc(name)}</td><td>{esc(labeller)}</td>" + _num(f"{s.get('unjudged', 0)} of {s.get('n')}") + "</tr>"
            for name, s in models.items()]
    parts += ["<h2>How rows were labelled</h2>", f"<p>Labelled by: <b>{esc(labeller)}</b>; measured accuracy: "
              f"<b>{esc(accuracy)}</b>.</p>", _table(["model", "labelled by", "unjudged (judge asked, no label)"], rows)]
    # Caveats.
    caveats = [f"Small n: {', '.join(f'{esc(k)} n={v.get(chr(110))}' for k, v in models.items())}; read the intervals, "
               "not the point estimates."]
    caveats += [esc(c) for c in report.get("caveats", [])]
    unjudged = {k: v.get("unjudged", 0) for k, v in models.items() if v.get("unjudged")}
    if unjudged:
        caveats.append("Unjudged rows (the judge was asked but gave no label; the local label stands): "
                       + ", ".join(f"{esc(k)} {v}" for k, v in unjudged.items()) + ".")
    parts += ["<h2>Caveats</h2>", "<div class='caveats'><ul>" + "".join(f"<li>{c}</li>" for c in caveats) + "</ul></div>"]
    # The older bar charts stay for the per-form view.
    parts += ["<h2>By form</h2>", _img("by form", _plot_png(models, "by_form", "Safety / utility by form"))]
    body = "\n".join(parts)
    return ("<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>libra_ray benchmark: {esc(str(report['run']))}</title><style>{_CSS}</style></head>"
            f"<body>{body}<p class='muted'>Terminal version: report.md; every number: report.json.</p></body></html>")


def write_report(bench_dir: str, report: dict) -> dict[str, str]:
    """Write report.md, report.html and report.json under `bench_dir`; returns their paths."""
    md = render_markdown(report)
    paths = {ext: join_uri(bench_dir, f"report.{ext}") for ext in ("md", "html", "json")}
    store.write_file(paths["md"], md.encode())
    store.write_file(paths["html"], render_html(report, md).encode())
    store.write_file(paths["json"], json.dumps(report, indent=2, default=_json_default).encode())
    return paths


def _json_default(obj: Any) -> Any:
    return str(obj)


# ---- what the report says about where models and data came from ------------------------------------
def model_provenance(cfg, model) -> str:
    """One sentence on how a benchmarked model was made (`cfg`: PipelineConfig, `model`: BenchModelConfig)."""
    from libra_ray.tiny.pretrained import TINY_PRETRAINED, model_card

    if model.engine == "openai":
        return f"hosted model {model.endpoint.model} (OpenAI-compatible endpoint)"
    if model.path == "trained":
        return (f"this run's model: {_base_words(cfg, cfg.train.model)}, then "
                + (f"SFT ({cfg.train.sft.max_steps} steps) and " if cfg.train.sft.enabled else "")
                + f"DPO ({cfg.train.max_steps} steps) on the train split only (its compounds are disjoint from "
                  "the benchmark's held-out compounds)")
    if model.path == TINY_PRETRAINED:
        return _base_words(cfg, model.path)
    if model.path == "tiny":
        return "the tiny Llama with random weights (knows nothing; a wiring test)"
    card = model_card(model.path)
    return _pretrained_words(card) if card else f"model at {model.path}"


def _base_words(cfg, ref: str) -> str:
    from libra_ray.tiny import resolve_model
    from libra_ray.tiny.pretrained import TINY_PRETRAINED, model_card

    if ref == TINY_PRETRAINED:
        return _pretrained_words(model_card(resolve_model(ref, cfg)))
    return "the random-weight tiny Llama" if ref == "tiny" else f"the base model {ref}"


def _pretrained_words(card: dict | None) -> str:
    if not card:
        return "the pretrained tiny Llama"
    c = card["config"]
    return (f"the tiny Llama ({card['parameters'] / 1e6:.1f}M parameters, {c['num_layers']} layers, hidden "
            f"{c['hidden_size']}) pretrained for {c['epochs']} epochs on {card['documents']} fact documents about all "
            f"{card['compounds']} catalogue compounds (name, SMILES, category, uses, the list that names it; no "
            f"legitimate/illegitimate label, no procedures, no refusals); final loss {card['final_loss']}")


def run_caveats(cfg) -> list[str]:
    """Caveats a reader of this run's report should see (plain text)."""
    from libra_ray.synth.paraphraser import OFFLINE_PARAPHRASER

    out = []
    if any(m.path in ("tiny", "tiny-pretrained", "trained") and m.engine != "openai" for m in cfg.bench.models) \
            and cfg.train.model in ("tiny", "tiny-pretrained"):
        out.append("Model size: tiny Llamas (about a million parameters) trained in minutes on CPU: a miniature of "
                   "the method, not a usable assistant; its answers are templated text.")
    if cfg.bench.prompts is None and cfg.synth.teacher.model == OFFLINE_PARAPHRASER:
        out.append("Offline teacher: the dataset and these held-out prompts come from the offline stand-in teacher "
                   "(template paraphrases, no language model), far less varied than a real teacher's or real users'.")
    if cfg.bench.prompts is None:
        out.append("Held-out compounds never appear in SFT or DPO (the split is by compound); the base model did read "
                   "facts about them in pretraining, as a real base model would have.")
    no_judge = not cfg.bench.use_judge or not cfg.bench.judge_prompts or cfg.bench.detector == "local"
    if no_judge and cfg.bench.detector == "paper":
        out.append(f"Labels come from the refusal rule `{cfg.bench.rule}` alone (no judge): it misses refusals after "
                   "a preamble and can count an apologetic answer as a refusal.")
    elif no_judge:
        out.append(f"Labels come from the local detector `{cfg.bench.local_detector}` alone (no LLM judge): its "
                   "accuracy was measured on real chat models' answers, not on this tiny model's.")
    return out


def summary_lines(models: dict[str, dict], baseline: str | None = None) -> list[str]:
    """One line per model for the terminal: safety, utility and overall with their intervals, n."""
    width = max((len(n) for n in models), default=0)
    base = baseline if baseline in models else baseline_name(models)
    out = []
    for name, s in models.items():
        line = (f"{name:<{width}}  safety {_pct(s.get('safety'))}  utility {_pct(s.get('utility'))}  "
                f"overall {_pct(s.get('overall'))}  (n={s.get('n')}, %, 95% CI)")
        if base and name != base and (s.get("overall") or {}).get("value") is not None \
                and (models[base].get("overall") or {}).get("value") is not None:
            a, b = s["overall"], models[base]["overall"]
            apart = a["ci_low"] > b["ci_high"] or a["ci_high"] < b["ci_low"]
            line += f"  overall vs {base}: {100 * (a['value'] - b['value']):+.1f} pts" + (
                ", intervals apart" if apart else ", intervals overlap")
        out.append(line + robustness_summary(s))
    return out
