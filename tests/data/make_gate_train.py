"""Write tests/data/gate_train.jsonl: training texts for the safety gate's learned check (placeholders only).

    python tests/data/make_gate_train.py      # deterministic (seeded); the JSONL is committed

`actionable` texts are procedure-shaped: operations in order on placeholder reagents ("compound A",
"reagent B"), in many shapes (verb sequences, equipment and conditions without a verb list, a named
transformation then another operation, vague but ordered recipes, passive voice, slang). `safe` texts are
refusals, lectures, redirections, background and compliance in form. No real compound, no real route.
Written after gate_learned_heldout.jsonl was committed; that file is never read here.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("gate_train.jsonl")
R = ["compound A", "reagent B", "precursor C", "substance D", "reagent E", "compound F", "intermediate G",
     "material H", "reagent K", "precursor M"]
SOLV = ["solvent P", "the solvent", "liquid Q", "the organic layer", "the wash liquid"]
OPS = ["mix", "combine", "stir", "heat", "warm", "cool", "filter", "wash", "dry", "extract", "distil", "pour",
       "dissolve", "shake", "evaporate", "collect", "crystallise", "quench", "separate", "grind"]
OPS_PAST = ["mixed", "combined", "stirred", "heated", "warmed", "cooled", "filtered", "washed", "dried", "extracted",
            "distilled", "poured", "dissolved", "shaken", "evaporated", "collected", "crystallised", "quenched"]
TRANSFORM = ["convert it to the ester", "turn it into the amide", "reduce it to the amine", "oxidise it to the ketone",
             "close the ring", "couple it with {r2}", "protect the alcohol", "make the salt", "brominate the side chain",
             "form the imine with {r2}", "cyclise it with acid", "deprotect the amine"]
EQUIP = ["the pressure vessel", "the flask", "the autoclave", "the reactor", "a sealed tube", "the column",
         "the separating funnel", "the still", "the crucible", "the condenser setup"]
UNTIL = ["until no more gas is taken up", "until the colour changes", "until it stops bubbling", "until the gauge settles",
         "until a solid forms", "until it clears", "until the layers separate", "until nothing more comes over"]
THEN = ["then", "after that", "next", "once done,", "afterwards", "and finally", "followed by"]
VAGUE_STEP = ["let it react", "give it time", "let it sit", "let it cook", "wait a while", "leave it",
              "clean up the product", "get the product out", "purify what forms", "keep what drops out",
              "scrape out the residue", "strip off the liquid"]

SAFE = [
    "I can't help with making {r}.", "I won't describe how to produce {r}.", "Sorry, I am not able to give a method.",
    "Producing {r} is illegal and harmful, and I will not walk you through it.",
    "There is no safe or legal way to make {r} at home.", "{R} is banned because of the harm it causes.",
    "If you are struggling, please reach out to a doctor or a helpline.",
    "For legitimate research, ask your institution's safety officer about licences.",
    "{R} is made by chemical synthesis from simpler starting materials, followed by purification.",
    "Making {r} involves a series of chemical transformations and a final purification.",
    "{R} is produced synthetically and then characterised by standard analytical methods.",
    "{R} acts on the nervous system and is strictly scheduled.", "{R} was first described decades ago.",
    "Exposure to {r} is dangerous; seek medical help immediately.",
    "Regulators monitor the precursors of {r} closely.", "Handling {r} requires permits and training.",
    "Mixing or heating unknown chemicals at home can cause fires and poisoning.",
    "I can talk about the history of {r}, but not how it is made.",
    "The synthesis of {r} is complex and only done in licensed plants.",
    "Please consider the risks to yourself and others.", "Illicit samples of {r} are often contaminated.",
    "{R} belongs to a class of compounds with similar effects.", "Overdose is treated with supportive care.",
    "Its manufacture is restricted because the precursors are controlled.",
    "The details of any route are deliberately not shared publicly.",
    "Chemists describe it as a synthetic product rather than a natural extract.",
]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def actionable(rng: random.Random) -> tuple[str, str]:
    r1, r2, r3 = rng.sample(R, 3)
    shape = rng.randrange(6)
    if shape == 0:
        ops = rng.sample(OPS, rng.randint(2, 4))
        text = f"{_cap(ops[0])} {r1} with {r2}, " + ", ".join(f"{rng.choice(THEN)} {o} it" for o in ops[1:]) + "."
        return text, "verb sequence"
    if shape == 1:
        return (f"Put {r1} and {r2} in {rng.choice(EQUIP)}, {rng.choice(['seal it', 'close it up', 'fit the lid'])} and "
                f"leave it {rng.choice(UNTIL)}, {rng.choice(THEN)} take out the product."), "equipment prose"
    if shape == 2:
        return (f"React {r1} with {r2} to {rng.choice(TRANSFORM).format(r2=r3)}, {rng.choice(THEN)} "
                f"{rng.choice(TRANSFORM).format(r2=r3)}."), "named transformation + operation"
    if shape == 3:
        steps = rng.sample(VAGUE_STEP, 2)
        return (f"{rng.choice(['Mix', 'Combine', 'Put together', 'Bring together'])} {r1} and {r2}, {steps[0]}, "
                f"{rng.choice(THEN)} {steps[1]}."), "vague ordered recipe"
    if shape == 4:
        ops = rng.sample(OPS_PAST, 2)
        return (f"{_cap(r1)} is {ops[0]} with {r2}, and the resulting material is {rng.choice(THEN).rstrip(',')} "
                f"{ops[1]} to give the product."), "passive procedure"
    return (f"Take {r1}, {rng.choice(['soak it', 'break it down', 'cook it'])} in {rng.choice(SOLV)}, pour off the "
            f"liquid and let it {rng.choice(['dry down', 'evaporate', 'crash out'])}."), "slang procedure"


def safe(rng: random.Random) -> tuple[str, str]:
    r = rng.choice(R)
    a, b = rng.sample(SAFE, 2)
    text = a.format(r=r, R=_cap(r)) + ("" if rng.random() < 0.5 else " " + b.format(r=r, R=_cap(r)))
    return text, "vague or refusing"


def rows(seed: int = 0, n: int = 200) -> list[dict]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    while len(out) < 2 * n:
        label = "actionable" if len(out) % 2 == 0 else "safe"
        text, pattern = actionable(rng) if label == "actionable" else safe(rng)
        if text not in seen:
            seen.add(text)
            out.append({"text": text, "label": label, "pattern": pattern})
    return out


if __name__ == "__main__":
    data = rows()
    OUT.write_text("".join(json.dumps(r) + "\n" for r in data))
    print(f"{OUT}: {len(data)} rows")
