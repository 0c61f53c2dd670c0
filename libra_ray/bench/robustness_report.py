"""The report's sections on the alignment tax (capability set) and safety under attack (jailbreak wrappers):
Markdown, HTML with an inline SVG plot (direct vs wrapped, per wrapper), and the terminal summary words.
Everything is read from `models.<name>.capability` and `models.<name>.under_attack` of the report dict."""

from __future__ import annotations

import html


def _pct(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    return f"{100 * m['value']:.1f} [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}]"


def _pts(d: dict | None) -> str:
    """A difference in points with its interval: '-3.1 pts [-9.0, +2.8]'."""
    if not d or d.get("value") is None:
        return "n/a"
    return f"{100 * d['value']:+.1f} pts [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


# ---- Markdown -----------------------------------------------------------------------------------
def capability_markdown(models: dict[str, dict]) -> list[str]:
    scored = {n: s["capability"] for n, s in models.items() if s.get("capability")}
    if not scored:
        return []
    types = sorted({t for c in scored.values() for t in c["by_type"]})
    lines = ["", "## Capability set (alignment tax)", "",
             "Multiple-choice chemistry facts about catalogue compounds (RDKit + catalogue fields), graded exactly: "
             "local models by the log-likelihood of each option, API models by the letter they answer. Chance = "
             "25%. Change vs base: Newcombe interval for the difference.", "",
             "| model | n | accuracy | legitimate only | held-out compounds | train compounds | change vs base | "
             "legitimate-only change |", "|---|---|---|---|---|---|---|---|"]
    for name, c in scored.items():
        vs = c.get("vs_base") or {}
        lines.append(f"| {name} | {c['n']} | {_pct(c['accuracy'])} | {_pct(c['legitimate_only']['accuracy'])} | "
                     f"{_pct(c['by_split'].get('held_out'))} | {_pct(c['by_split'].get('train'))} | "
                     f"{_pts(vs.get('accuracy'))} | {_pts(vs.get('legitimate_only'))} |")
    lines += ["", "| question type | " + " | ".join(scored) + " |", "|---|" + "---|" * len(scored)]
    for t in types:
        lines.append(f"| {t} | " + " | ".join(_pct(c["by_type"].get(t)) for c in scored.values()) + " |")
    return lines


def attack_markdown(models: dict[str, dict]) -> list[str]:
    attacked = {n: s["under_attack"] for n, s in models.items() if s.get("under_attack")}
    if not attacked:
        return []
    lines = ["", "## Safety under attack (jailbreak wrappers)", "",
             "The same held-out prompts asked directly and inside each wrapper (libra_ray/policy/jailbreaks.py). "
             "Safety = refusal rate on wrapped illegitimate prompts; utility = answer rate on wrapped legitimate "
             "prompts; change = wrapped - direct (Newcombe interval).", "",
             "| model | wrapper | family | seen in training | safety | safety change | utility | utility change |",
             "|---|---|---|---|---|---|---|---|"]
    for name, a in attacked.items():
        d = a["direct"]
        lines.append(f"| {name} | (direct) | - | - | {_pct(d['safety'])} | - | {_pct(d['utility'])} | - |")
        for wid, w in a["wrappers"].items():
            seen = "-" if w.get("seen") is None else ("yes" if w["seen"] else "no")
            lines.append(f"| {name} | {wid} | {w['family']} | {seen} | {_pct(w['safety'])} | "
                         f"{_pts(w['safety_change'])} | {_pct(w['utility'])} | {_pts(w['utility_change'])} |")
        m = a["mean"]
        lines.append(f"| {name} | **mean (pooled)** | - | - | {_pct(m['safety'])} | {_pts(m.get('safety_change'))} | "
                     f"{_pct(m['utility'])} | {_pts(m.get('utility_change'))} |")
        for part in ("seen", "unseen"):
            if a.get(part):
                lines.append(f"| {name} | **{part} wrappers** | - | {part} | {_pct(a[part]['safety'])} | - | "
                             f"{_pct(a[part]['utility'])} | - |")
        if a.get("worst"):
            lines.append(f"| {name} | **worst: {a['worst']['wrapper']}** | - | - | {_pct(a['worst']['safety'])} | - | - | - |")
    return lines


# ---- HTML ---------------------------------------------------------------------------------------
def attack_svg(name: str, a: dict, width: int = 760, height: int = 230) -> str:
    """Grouped bars per wrapper (direct vs wrapped safety, and wrapped utility) with interval whiskers."""
    groups = [("direct", a["direct"]["safety"], a["direct"]["utility"])]
    groups += [(wid, w["safety"], w["utility"]) for wid, w in a["wrappers"].items()]
    left, top, bottom = 34, 18, 58
    plot_h = height - top - bottom
    slot = (width - left - 10) / max(1, len(groups))
    bar = slot * 0.36
    y = lambda v: top + plot_h * (1 - v)  # noqa: E731
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
           f"aria-label='{html.escape(name)}: safety and utility per wrapper' font-family='sans-serif' font-size='10'>"]
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f"<line x1='{left}' x2='{width - 10}' y1='{y(tick):.1f}' y2='{y(tick):.1f}' stroke='#ddd'/>"
                   f"<text x='{left - 4}' y='{y(tick) + 3:.1f}' text-anchor='end'>{int(100 * tick)}</text>")
    for i, (label, safety, utility) in enumerate(groups):
        x0 = left + i * slot + slot * 0.12
        for j, (m, colour) in enumerate(((safety, "#b42318" if i else "#555"), (utility, "#1f6feb"))):
            if not m or m.get("value") is None:
                continue
            x = x0 + j * bar
            out.append(f"<rect x='{x:.1f}' y='{y(m['value']):.1f}' width='{bar * 0.92:.1f}' "
                       f"height='{plot_h * m['value']:.1f}' fill='{colour}' opacity='0.8'>"
                       f"<title>{html.escape(label)} {'safety' if j == 0 else 'utility'} {_pct(m)}</title></rect>")
            cx = x + bar * 0.46
            out.append(f"<line x1='{cx:.1f}' x2='{cx:.1f}' y1='{y(m['ci_low']):.1f}' y2='{y(m['ci_high']):.1f}' "
                       "stroke='#222'/>")
        out.append(f"<text x='{x0 + bar:.1f}' y='{height - bottom + 12}' text-anchor='end' "
                   f"transform='rotate(-30 {x0 + bar:.1f} {height - bottom + 12})'>{html.escape(label)}</text>")
    out.append(f"<text x='{left}' y='11'>{html.escape(name)}: safety (red; grey = direct) and utility (blue), %, "
               "with intervals</text></svg>")
    return "".join(out)


def _segments(lines: list[str]) -> tuple[str, list[list[str]]]:
    """(the intro paragraph, the Markdown tables) of a section made by the functions above."""
    blocks, cur = [], []
    for ln in lines + [""]:
        if ln:
            cur.append(ln)
        elif cur:
            blocks.append(cur)
            cur = []
    intro = next((b[0] for b in blocks if not b[0].startswith(("#", "|"))), "")
    return intro, [b for b in blocks if b[0].startswith("|")]


def robustness_html(models: dict[str, dict]) -> list[str]:
    """HTML parts: the capability tables, and the under-attack plot (one per model) and table."""
    esc = html.escape
    parts: list[str] = []
    cap = capability_markdown(models)
    if cap:
        intro, tables = _segments(cap)
        parts += ["<h2>Capability set (alignment tax)</h2>", f"<p class='muted'>{esc(intro)}</p>"]
        parts += [_md_table_html(t) for t in tables]
    att = attack_markdown(models)
    if att:
        intro, tables = _segments(att)
        parts += ["<h2>Safety under attack</h2>", f"<p class='muted'>{esc(intro)}</p>"]
        parts += [attack_svg(name, s["under_attack"]) for name, s in models.items() if s.get("under_attack")]
        parts += [_md_table_html(t) for t in tables]
    return parts


def _md_table_html(lines: list[str]) -> str:
    """A Markdown table (header, separator, rows) as an HTML table."""
    rows = [ln for ln in lines if ln.startswith("|") and not set(ln) <= set("|-")]
    if not rows:
        return ""
    cells = [[c.strip().replace("**", "") for c in r.strip("|").split("|")] for r in rows]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---- terminal -----------------------------------------------------------------------------------
def robustness_summary(s: dict) -> str:
    """'  capability 41.2 [..] vs base -2.0 pts [..]  under attack: safety mean .. worst WRAPPER ..' (or '')."""
    out = ""
    cap = s.get("capability")
    if cap:
        out += f"  capability {_pct(cap['accuracy'])}"
        vs = cap.get("vs_base")
        if vs:
            out += f" vs {vs['base']} {_pts(vs['accuracy'])}"
    a = s.get("under_attack")
    if a and a.get("worst"):
        out += (f"  under attack: safety mean {_pct(a['mean']['safety'])}, worst {a['worst']['wrapper']} "
                f"{_pct(a['worst']['safety'])} (direct {_pct(a['direct']['safety'])})")
    return out


__all__ = ["attack_markdown", "attack_svg", "capability_markdown", "robustness_html", "robustness_summary"]
