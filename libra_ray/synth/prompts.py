"""Phase 1 templates (seed request and seed responses) and phase 2 teacher prompts + their parser.

Safety by construction: for illegitimate seeds the teacher only ever paraphrases texts we wrote,
a refusal and a *compliance in form only* reply (sounds willing, says nothing actionable), with explicit
instructions to add no reagents, quantities, conditions or steps. It is never asked how to make an
illegitimate compound. Legitimate seeds get real helpful answers (the utility side of the dataset).

Every list the teacher returns is validated (`parse_list` + `list_validator`): exactly N non-empty
items, no leaked instructions (e.g. the word "rephrase"), and request paraphrases must keep the
compound's identifier. Bad answers are retried by the client, then dropped and counted; the seed text
itself is always item #0, so every seed yields at least one triplet even with a nonsense teacher.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

PROMPT_VERSION = "v1"

# Phase 1: the published seed request, in the two surface forms.
SEED_REQUEST = {
    "TEXT": "Tell me the steps of synthesizing {subject}.",
    "SMILES": "Tell me the steps of synthesizing the compound with SMILES {subject}.",
}

_REFUSAL_REASON = {
    "controlled substance": "it is a controlled substance, and making it outside a licensed setting is illegal and dangerous",
    "drug precursor": "it is a regulated drug precursor, and helping to make it could facilitate illegal drug production",
    "chemical weapon": "it is a chemical warfare agent controlled under the Chemical Weapons Convention",
    "chemical weapon precursor": "it is a chemical weapons precursor controlled under the Chemical Weapons Convention",
    "explosive": "it is an explosive, and instructions could cause serious harm",
    "explosive precursor": "it is a restricted explosives precursor, and instructions could be misused to cause harm",
}
_DEFAULT_REASON = "it could be used to cause serious harm"


def seed_request(subject: str, form: str) -> str:
    return SEED_REQUEST[form].format(subject=subject)


def seed_refusal(subject: str, cls: str, category: str) -> str:
    if cls == "illegitimate":
        reason = _REFUSAL_REASON.get(category, _DEFAULT_REASON)
        return (f"I'm sorry, but I can't help with synthesizing {subject}: {reason}. "
                "If you are interested in its pharmacology, history or regulation, I'm happy to talk about that.")
    # The over-refusal that the legitimate side of the dataset teaches the model to avoid.
    return f"I'm sorry, but I can't provide instructions for synthesizing {subject}. It may be dangerous or illegal."


def seed_compliance(subject: str) -> str:
    """Compliance in form only (the *rejected* answer for illegitimate seeds): no actionable content."""
    return (f"Sure, I can help with that. {subject} is made by chemical synthesis from simpler starting materials, "
            "followed by purification and analysis of the product.")


def seed_helpful(subject: str, category: str) -> str:
    """A generic helpful answer (the *chosen* answer for legitimate seeds) before the teacher's versions."""
    return (f"Sure. {subject} is a {category} chemical with well-documented preparations. In outline, it is made "
            "from commercially available precursors by standard reactions, then purified (e.g. by distillation or "
            "recrystallisation) and its identity checked. Consult the primary literature and the safety data "
            "sheet, and work in a properly equipped laboratory.")


SYSTEM = ("You write training data for a chemistry-safety dataset. Reply with a JSON array of exactly {n} strings "
          "and nothing else: no numbering, no commentary.")


def paraphrase_request_messages(request: str, subject: str, n: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM.format(n=n)},
            {"role": "user", "content": (f"Give {n} different paraphrases of the request below. Keep its meaning, keep "
                                         f"the identifier {subject} exactly as written, vary wording and tone. Do not "
                                         f"answer it.\n\nRequest: {request}")}]


def paraphrase_refusal_messages(refusal: str, n: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM.format(n=n)},
            {"role": "user", "content": (f"Give {n} different paraphrases of the refusal below. Each must stay a polite "
                                         f"refusal and give no chemical details.\n\nText: {refusal}")}]


def paraphrase_compliance_messages(reply: str, n: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM.format(n=n)},
            {"role": "user", "content": (f"Give {n} different paraphrases of the reply below. Each must sound willing "
                                         "to help but stay exactly as vague as the original: name no reagents or "
                                         "starting materials, give no quantities, temperatures, times or other "
                                         "conditions, no equipment and no steps.\n\nText: " + reply)}]


def helpful_answer_messages(request: str, n: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM.format(n=n)},
            {"role": "user", "content": (f"Give {n} different helpful answers to the request below for a chemistry "
                                         "student: an accurate high-level overview of how the compound is produced "
                                         "(route, key transformations, purification) and the main safety "
                                         f"precautions.\n\nRequest: {request}")}]


# Words that show the teacher echoed our instructions instead of doing the task.
LEAK_PATTERNS = re.compile(r"\b(re-?phras\w*|paraphras\w*|json|array of|as an ai|here (are|is) (the|your|\d+))\b"
                           r"|^(request|text)\s*:", re.IGNORECASE | re.MULTILINE)
_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+(.*\S)\s*$")


def parse_list(text: str) -> list[str] | None:
    """A JSON array of strings (code fences allowed), else a numbered/bulleted list; None if neither."""
    body = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", body, re.DOTALL)
    if fence:
        body = fence.group(1)
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return [x.strip() for x in data]
    items = [m.group(1) for line in body.splitlines() if (m := _ITEM.match(line))]
    return items or None


def list_validator(n: int, must_contain: str | None = None) -> Callable[[str], str | None]:
    """Validator for the client: None if `text` is a usable list of exactly `n` items, else the reason."""

    def check(text: str) -> str | None:
        items = parse_list(text)
        if items is None:
            return "not a list"
        if len(items) != n:
            return f"wrong count ({len(items)} items, wanted {n})"
        if any(not item for item in items):
            return "empty item"
        if any(LEAK_PATTERNS.search(item) for item in items):
            return "leaked instructions"
        if must_contain and any(must_contain.lower() not in item.lower() for item in items):
            return "lost the compound identifier"
        return None

    return check
