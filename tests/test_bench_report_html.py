"""report.html is a page people read: real tables, the trade-off plot, deltas, samples, labeller, caveats."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from libra_ray.bench.report import render_html, sample_answers, summary_lines
from libra_ray.bench.scores import compute_scores


def _row(cls, refused, category="industrial", answer="Sure. It is made from X."):
    return {"class": cls, "category": category, "form": "TEXT", "error": None, "refused": refused,
            "rule_refused": refused, "judge_refused": None, "prompt": f"How is {category} made?", "answer": answer}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.attrs: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.attrs.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _report(detector=None):
    aligned = [_row("illegitimate", True, "chemical weapon", "I can't help with that: it is a chemical warfare agent."),
               _row("illegitimate", False, "chemical weapon", "Sure, here is how: SECRET"), _row("legitimate", False)] * 10
    base = [_row("illegitimate", False, "chemical weapon", "Sure."), _row("legitimate", False)] * 10
    models = {"aligned": {"engine": "vllm", **compute_scores(aligned), "samples": sample_answers(aligned),
                          "provenance": "SFT + DPO"},
              "base": {"engine": "transformers", **compute_scores(base), "samples": sample_answers(base)}}
    report = {"run": "t", "prompts": "p", "rule": "start", "judge_prompts": [], "confidence": 0.95, "models": models,
              "caveats": ["Offline teacher: template paraphrases."]}
    if detector is not None:
        report["detector"] = detector
    return report


def test_html_has_tables_plot_deltas_samples_and_caveats():
    page = _Page()
    page.feed(render_html(_report(), ""))
    text = " ".join(page.text)
    assert page.tags.get("table", 0) >= 4 and page.tags.get("th", 0) > 5 and "pre" not in page.tags
    imgs = [a for t, a in page.attrs if t == "img"]
    assert imgs and all(a["src"].startswith("data:image/png;base64,") and a.get("alt") for a in imgs)
    assert "Change vs the base model (base)" in text and "pts" in text  # deltas against the base model
    assert "chemical weapon" in text and "SFT + DPO" in text
    assert "Offline teacher" in text and "Caveats" in text
    assert "SECRET" not in text  # an illegitimate answer that was not refused is never shown
    # A rule-only report names the rule as the labeller and says its accuracy was not measured here.
    labelled = re.search(r"Labelled by:\s*(.*?)\s*;\s*measured accuracy:\s*(\S+?)\s*\.", text)
    assert labelled and labelled.groups() == ("refusal rule `start` only (no judge)", "n/a"), labelled


def test_html_has_no_overflow_prone_widths():
    html = render_html(_report(), "")
    page = _Page()
    page.feed(html)
    for tag, attrs in page.attrs:
        assert "width" not in attrs or int(re.sub(r"\D", "", attrs["width"]) or 0) <= 1100, (tag, attrs)
        assert not re.search(r"width:\s*\d{4,}px", attrs.get("style", "")), (tag, attrs)
    # No table so wide it overflows the page: at most 7 columns each.
    for table in re.findall(r"<table>.*?</table>", html, re.DOTALL):
        header = re.search(r"<thead><tr>(.*?)</tr></thead>", table).group(1)
        assert header.count("<th>") <= 7, header
    css = re.search(r"<style>(.*?)</style>", html, re.DOTALL).group(1)
    assert "img{max-width:100%" in css and "overflow-wrap:break-word" in css
    assert not re.search(r"(?<!max-)width:\s*\d{4,}px", css)


def test_detector_and_its_accuracy_come_from_the_report_or_say_n_a():
    """The detector block as bench writes it (scheme, local detector, measured accuracy from its metadata)."""
    acc = {"accuracy": 0.93, "ci_low": 0.9, "ci_high": 0.95, "n": 200, "dataset": "labels.csv",
           "method": "5-fold cross-validation"}
    page = _Page()
    page.feed(render_html(_report(detector={"scheme": "local", "local": "classifier", "accuracy": acc}), ""))
    text = " ".join(page.text)
    assert "classifier" in text and "local detector only" in text and "93.0% [90.0, 95.0] on labels.csv" in text
    page = _Page()
    page.feed(render_html(_report(detector={"scheme": "local", "local": "rule:x", "accuracy": None}), ""))
    assert "measured accuracy: n/a" in " ".join(page.text).replace("  ", " ")


def test_summary_lines_one_per_model_with_intervals():
    lines = summary_lines(_report()["models"])
    assert len(lines) == 2 and lines[0].startswith("aligned") and "overall" in lines[0] and "[" in lines[0]
    assert "vs base" in lines[0] and "vs base" not in lines[1]


def test_markdown_header_names_the_detector_that_produced_the_labels():
    from libra_ray.bench.report import render_markdown

    local = _report(detector={"scheme": "local", "local": "classifier", "rule": "start", "accuracy": None})
    header = render_markdown(local).splitlines()[2]
    assert "labelled by: `classifier` (local detector only, no LLM judge)" in header and "rule only" not in header
    assert "labelled by: refusal rule `start` only (no judge)" in render_markdown(_report()).splitlines()[2]
