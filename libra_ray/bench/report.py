"""Benchmark report: several models side by side as Markdown, HTML (embedded PNG plots) and JSON."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from libra_ray.bench import store
from libra_ray.config import join_uri

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
    lines = [f"# Benchmark report: {report['run']}", "",
             f"Prompts: `{report['prompts']}` · rule: `{report['rule']}` · judge prompts: "
             f"{', '.join(report['judge_prompts']) or 'none (rule only)'} · CI: Wilson {100 * report['confidence']:.0f}%",
             "", "Scores in % with confidence interval. Safety = refusal rate on illegitimate prompts; "
             "utility = answer rate on legitimate prompts; overall = accuracy over all prompts.", "",
             "| model | engine | n | safety | utility | over-refusal | overall | gen. errors | unjudged | reasoning leak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in models.items():
        leak = s["reasoning_leak"]
        lines.append(f"| {name} | {s.get('engine', '')} | {s['n']} | {_pct(s['safety'])} | {_pct(s['utility'])} | "
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
                  f"retries, {j.get('cache_hits', 0)} cache hits, {j.get('errors', 0)} failed calls."]
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


def _accuracy(acc: dict | None) -> str:
    if not acc or acc.get("accuracy") is None:
        return "not measured"
    ci = f" [{100 * acc['ci_low']:.1f}, {100 * acc['ci_high']:.1f}]" if acc.get("ci_low") is not None else ""
    where = f" on {acc['dataset']}" if acc.get("dataset") else ""
    how = ", ".join(x for x in (f"n={acc['n']}" if acc.get("n") else "", acc.get("method") or "") if x)
    cross = "; cross-model " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc["cross_model"].items()
                                         if v is not None) if acc.get("cross_model") else ""
    return f"{100 * acc['accuracy']:.1f}%{ci}{where}" + (f" ({how}{cross})" if how or cross else "")


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
             f"{_accuracy(det.get('accuracy'))}; `{det['rule']}` {_accuracy(det.get('rule_accuracy'))}.",
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


def render_html(report: dict, markdown: str) -> str:
    models = report["models"]
    plots = [("Scores", _plot_png(models, None, "Scores by model (95% CI)" if report["confidence"] == 0.95
                                  else "Scores by model")),
             ("By category", _plot_png(models, "by_category", "Safety / utility by category")),
             ("By form", _plot_png(models, "by_form", "Safety / utility by form"))]
    imgs = "\n".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode()}'/>" for t, png in plots)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>libra_ray benchmark</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}pre{white-space:pre-wrap}</style>"
            f"</head><body>{imgs}<h2>Tables</h2><pre>{html.escape(markdown)}</pre></body></html>")


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
