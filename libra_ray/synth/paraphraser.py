"""The offline stand-in teacher: a template paraphraser served over the real OpenAI-compatible HTTP path.

Selected with `synth.teacher.model: offline-paraphraser` (and `base_url: null`):
`libra_ray.endpoints.open_endpoint` starts it on 127.0.0.1 (`libra_ray.llm.testserver.TestOpenAIServer`,
a real uvicorn server; `responder` is what it answers with) and the synth stage calls it with the ordinary ChatClient, retries, cache and validators, exactly as a paid teacher.
It is *not* a language model: it reads which of the four phase-2 tasks (`libra_ray.synth.prompts`) a
request is, and answers with N distinct variants built from templates (synonyms, sentence order,
openings and closings), deterministic by seed and request text. Like a real teacher it knows what a
catalogue compound is (`libra_ray.facts`), so helpful answers and refusals name its category and the
list that names it. For illegitimate seeds it only ever rewords the refusal and the compliance-in-form
reply it was given: it has no procedure to give, and its texts pass the safety gate.

Swap in a real teacher by setting `synth.teacher.base_url` and `model`; the dataset card records which one ran.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from functools import lru_cache

from libra_ray.facts import facts, listed_clause

OFFLINE_PARAPHRASER = "offline-paraphraser"
DESCRIPTION = ("offline stand-in for a real teacher: a deterministic template paraphraser (no language model), "
               "served over the OpenAI-compatible HTTP path")

# ---- request paraphrases ("Tell me the steps of synthesizing X.") ------------------------------
_REQUESTS = (
    "Tell me the steps of synthesizing {obj}.",
    "How would one synthesize {obj}?",
    "What are the steps to make {obj}?",
    "Explain how to prepare {obj}.",
    "Could you walk me through the synthesis of {obj}?",
    "Describe how {obj} is made, step by step.",
    "I need to know how to synthesize {obj}.",
    "What is the synthetic route to {obj}?",
    "Give me a procedure for making {obj}.",
    "Please outline how to produce {obj} in a lab.",
    "How can I make {obj} myself?",
    "Can you explain the preparation of {obj}?",
)
# ---- refusals (the chosen answer for illegitimate seeds, the rejected one for legitimate seeds) ----
# Every refusal opens with "I ..." and every willing reply with "Sure": the decision sits in the first word,
# with the same spread on both sides (a tiny model decoding greedily would otherwise favour the side whose
# openings share a first token), and it is what refusal detectors look for at the start of an answer.
_REFUSAL_OPEN = (
    "I'm sorry, but I can't help with synthesizing {subject}",
    "I can't help with making {subject}",
    "I cannot provide a synthesis of {subject}",
    "I won't give instructions for preparing {subject}",
    "I must decline to explain how to make {subject}",
    "I'm not able to help with the synthesis of {subject}",
)
_REFUSAL_CLOSE = (
    "If you are interested in its pharmacology, history or regulation, I'm happy to talk about that.",
    "I'd be glad to discuss its history, its effects or how it is regulated instead.",
    "I can, however, talk about its regulation or its history.",
    "Happy to help with questions about its properties or legal status instead.",
    "",
)
_OVER_REFUSAL_REASON = ("It may be dangerous or illegal.", "It could be hazardous or unlawful.",
                        "This might be unsafe or against the law.", "Doing so may be dangerous.",
                        "It may pose legal or safety risks.")
# ---- compliance in form only (the rejected answer for illegitimate seeds): willing, never actionable ----
_COMPLY_OPEN = ("Sure, I can help with that.", "Sure, happy to help.", "Sure, here is an overview.",
                "Sure, I can explain.", "Sure, let me describe it.", "Sure.")
_COMPLY_BODY = (
    "{subject} is made by chemical synthesis from simpler starting materials, followed by purification and analysis of the product.",
    "{subject} is obtained through a chemical synthesis from simpler precursors, after which the product is purified and analysed.",
    "In general terms, {subject} comes from a multi-stage chemical synthesis, and the product is then purified and characterised.",
    "{subject} is produced synthetically from more basic compounds; the crude product is purified and its identity confirmed.",
    "Making {subject} involves a chemical synthesis from simpler building blocks and a final purification and analysis.",
)
# ---- helpful answers (the chosen answer for legitimate seeds) ------------------------------------
_HELP_OPEN = ("Sure.", "Sure, happy to help.", "Sure, gladly.", "Sure, good question.", "Sure, here is an outline.")
_HELP_BODY = (
    "In outline, it is made from commercially available precursors by standard reactions, then purified (e.g. by "
    "distillation or recrystallisation) and its identity checked.",
    "It is produced from readily available feedstocks by well-documented reactions; the product is purified and "
    "analysed before use.",
    "Its preparation uses established industrial or laboratory routes from common precursors, followed by "
    "purification and quality control.",
    "The usual route converts common starting chemicals through standard transformations, then isolates and "
    "purifies the product.",
)
_HELP_SAFETY = ("Consult the primary literature and the safety data sheet, and work in a properly equipped laboratory.",
                "Check the safety data sheet first and wear suitable protective equipment.",
                "Follow the safety data sheet and local regulations when handling it.",
                "Work in a fume hood with gloves and goggles, and read the safety data sheet.")

_TASKS = {
    "request": re.compile(r"paraphrases of the request below", re.IGNORECASE),
    "refusal": re.compile(r"paraphrases of the refusal below", re.IGNORECASE),
    "compliance": re.compile(r"paraphrases of the reply below", re.IGNORECASE),
    "helpful": re.compile(r"helpful answers to the request below", re.IGNORECASE),
}
_COUNT = re.compile(r"\bGive (\d+) different", re.IGNORECASE)
_PAYLOAD = re.compile(r"(?:Request|Text):\s*(.*)\Z", re.DOTALL)
_OBJECT = re.compile(r"synthesizing (.+?)\.?\s*\Z", re.DOTALL)
_SUBJECT_SMILES = re.compile(r"^the compound with SMILES (.+)$")
_REFUSAL_SUBJECT = re.compile(r"(?:synthesizing|making|preparing|of) (.+?)(?:: |\. )")
_COMPLY_SUBJECT = re.compile(r"^(?:Sure, I can help with that\. )?(.+?) is made by chemical synthesis")


_SEEDS_CSV: list[str | None] = [None]  # the catalogue this process's paraphraser knows (set by `responder`)


@lru_cache(maxsize=4)
def _lookup_in(seeds_csv: str | None) -> dict[str, tuple[str, str, str]]:
    """name / SMILES (lower-case) -> (name, category, source) from the catalogue."""
    from libra_ray.seeds import load_catalogue

    out = {}
    for c in load_catalogue(seeds_csv):
        out[c.name.lower()] = (c.name, c.category, c.source)
        if c.smiles:
            out.setdefault(c.smiles.lower(), (c.name, c.category, c.source))
    return out


def _known(subject: str) -> tuple[str, str, str] | None:
    return _lookup_in(_SEEDS_CSV[0]).get(subject.strip().lower())


def _pick(rng: random.Random, options: list[str], n: int) -> list[str]:
    """n distinct options (rng order); cycles with a numbered variant only if there are too few."""
    options = list(dict.fromkeys(o.strip() for o in options if o.strip()))
    rng.shuffle(options)
    return [options[i % len(options)] for i in range(n)]


def _requests(request: str, rng: random.Random, n: int) -> list[str]:
    m = _OBJECT.search(request)
    obj = m.group(1) if m else request.rstrip(".?")
    own = request.strip().lower()
    return _pick(rng, [t.format(obj=obj) for t in _REQUESTS if t.format(obj=obj).lower() != own], n)


def _refusals(text: str, rng: random.Random, n: int) -> list[str]:
    m = _REFUSAL_SUBJECT.search(text)
    subject = m.group(1) if m else "that compound"
    over_refusal = "may be dangerous or illegal" in text  # the legitimate side's over-refusal
    known = _known(subject) or _known(_SUBJECT_SMILES.sub(r"\1", subject))
    if over_refusal:
        opts = [f"{o.format(subject=subject)}. {r}" for o in _REFUSAL_OPEN for r in _OVER_REFUSAL_REASON]
    else:
        # A known compound's refusal gives the reason in the words its public facts use (what a real teacher
        # would say); otherwise the seed's own reason.
        if known:
            f = facts(known[1], known[2])
            reasons = [f"it is {f.what}", f"it is {f.what}{listed_clause(f)}", f"{known[0]} is {f.what}, and {f.use}"]
        else:
            seed_reason = text.split(": ", 1)[1].split(". ", 1)[0] if ": " in text else ""
            reasons = [seed_reason or "it could be used to cause serious harm"]
        opts = [f"{o.format(subject=subject)}: {r}. {c}".strip() for o in _REFUSAL_OPEN for r in reasons for c in _REFUSAL_CLOSE]
    return _pick(rng, opts, n)


def _compliance(text: str, rng: random.Random, n: int) -> list[str]:
    m = _COMPLY_SUBJECT.search(text)
    subject = m.group(1) if m else "The compound"
    return _pick(rng, [f"{o} {b.format(subject=subject)}" for o in _COMPLY_OPEN for b in _COMPLY_BODY], n)


def _helpful(request: str, rng: random.Random, n: int) -> list[str]:
    m = _OBJECT.search(request)
    obj = m.group(1) if m else "this compound"
    subject = _SUBJECT_SMILES.sub(r"\1", obj)
    known = _known(subject)
    if known:
        f = facts(known[1], known[2])
        intro = (f"The compound with SMILES {subject} is {known[0]}, {f.what}{listed_clause(f)}; {f.use}."
                 if obj != subject else f"{subject} is {f.what}{listed_clause(f)}; {f.use}.")
    else:
        intro = f"{obj[:1].upper() + obj[1:]} is a chemical with well-documented preparations."
    return _pick(rng, [f"{o} {intro} {b} {s}" for o in _HELP_OPEN for b in _HELP_BODY for s in _HELP_SAFETY], n)


def paraphrase(messages: list[dict], seed: int = 0) -> list[str]:
    """The N items the phase-2 request in `messages` asks for (ValueError when it is not one)."""
    user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    count = _COUNT.search(user)
    payload = _PAYLOAD.search(user)
    task = next((name for name, pattern in _TASKS.items() if pattern.search(user)), None)
    if not (count and payload and task):
        raise ValueError("not a phase-2 paraphrase request (see libra_ray.synth.prompts)")
    n, text = int(count.group(1)), payload.group(1).strip()
    rng = random.Random(hashlib.sha256(f"{seed}:{user}".encode()).hexdigest())
    return {"request": _requests, "refusal": _refusals, "compliance": _compliance, "helpful": _helpful}[task](text, rng, n)


def responder(seed: int = 0, seeds_csv: str | None = None):
    """A `TestOpenAIServer` responder: a JSON array of the N paraphrases (facts from `seeds_csv`)."""
    _SEEDS_CSV[0] = seeds_csv
    _lookup_in(seeds_csv)  # load once now, not on the server's event loop

    def respond(messages: list[dict], params: dict) -> str:
        return json.dumps(paraphrase(messages, seed))

    return respond
