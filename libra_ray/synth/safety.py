"""The safety gate: texts attached to an illegitimate compound must not be actionable.

A response is rejected when it contains any of: quantities (a number with a mass, volume, amount or
concentration unit, equivalents, percentages), reaction conditions (temperatures, durations,
pressures, pH, reflux / inert atmosphere / dropwise ...), step-by-step structure (numbered steps,
"Step 2", "first ... then ..." procedures) or reagent lists (a "reagents:"/"you will need" header,
or two or more named chemicals other than the compound itself). Conservative on purpose: a false
positive costs one paraphrase, a false negative would put a procedure into the dataset.
"""

from __future__ import annotations

import functools
import re

_UNITS = (r"mg|g|kg|µg|ug|mL|ml|L|l|µL|uL|mol|mmol|µmol|eq|equiv|equivalents?|M|mM|N|ppm|%|wt%|v/v|w/w|"
          r"grams?|kilograms?|milligrams?|liters?|litres?|millilit(?:er|re)s?|moles?|drops?|teaspoons?|cups?")
_CHECKS: list[tuple[str, re.Pattern]] = [
    ("quantity", re.compile(rf"\b\d+(?:[.,]\d+)?\s*(?:{_UNITS})(?![A-Za-z])")),
    ("temperature", re.compile(r"\d+\s*(?:°|º|deg(?:rees?)?)\s*[CFK]?\b|\b\d+\s*K\b|\b(?:room|ambient) temperature\b",
                               re.IGNORECASE)),
    ("duration", re.compile(r"\b\d+(?:[.,]\d+)?\s*(?:h|hrs?|hours?|min|minutes?|days?|overnight)\b|\bovernight\b",
                            re.IGNORECASE)),
    ("pressure", re.compile(r"\b\d+(?:[.,]\d+)?\s*(?:atm|bar|psi|torr|mmHg|kPa|MPa)\b", re.IGNORECASE)),
    ("ph", re.compile(r"\bpH\s*(?:of\s*)?\d", re.IGNORECASE)),
    ("condition", re.compile(r"\b(?:reflux\w*|dropwise|under (?:nitrogen|argon|an inert)|inert atmosphere|"
                             r"ice bath|stir(?:red|ring)? (?:for|at|until)|heat(?:ed|ing)? (?:to|at)|cool(?:ed|ing)? "
                             r"(?:to|at)|distil(?:l|led|ling)? (?:at|under)|catalys(?:t|ed) by)\b", re.IGNORECASE)),
    ("steps", re.compile(r"(?:^|\n)\s*(?:step\s*\d+|\d+[.)])\s+\S|\bstep\s*[2-9]\b", re.IGNORECASE)),
    ("reagent list", re.compile(r"\b(?:reagents?|materials?|ingredients|chemicals needed|you(?:'ll| will) need|"
                                r"starting materials?)\s*(?:are|include|:)", re.IGNORECASE)),
]


def actionable_reasons(text: str, subject: str = "", chemical_names: frozenset[str] | None = None) -> list[str]:
    """Why `text` would be actionable for an illegitimate compound (empty list = passes the gate).

    `chemical_names` (lower-case) are names that count as reagents when two or more appear besides
    `subject` (the synth stage passes the catalogue's names)."""
    reasons = [name for name, pattern in _CHECKS if pattern.search(text)]
    if chemical_names:
        own = subject.lower()
        named = {m.lower() for m in _names_pattern(chemical_names).findall(text)}
        named = {n for n in named if n != own and n not in own}
        if len(named) >= 2:
            reasons.append("reagent list")
    return sorted(set(reasons))


@functools.lru_cache(maxsize=8)
def _names_pattern(names: frozenset[str]) -> re.Pattern:
    """One compiled alternation for the whole lexicon (longest names first), built once per lexicon."""
    alternation = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alternation})(?![\w-])", re.IGNORECASE)


def passes_gate(text: str, subject: str = "", chemical_names: frozenset[str] | None = None) -> bool:
    return not actionable_reasons(text, subject, chemical_names)
