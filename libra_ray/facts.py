"""Public facts about a catalogue compound, in plain words: what it is (its category), what it is
used for, and which public list or regulation names it.

This is the kind of text a real base model has read about a chemical (encyclopaedias, regulations,
catalogues). Two users: the fact corpus the tiny base model is pretrained on (`libra_ray.tiny.pretrained`),
and the offline stand-in teacher (`libra_ray.synth.paraphraser`), which, like a real teacher, knows
what a compound is. Never synthesis steps, and never our dataset label (legitimate / illegitimate).
"""

from __future__ import annotations

from dataclasses import dataclass

# category -> (what it is, what it is used for); unknown categories get a generic phrase.
_KNOWN: dict[str, tuple[str, str]] = {
    "chemical weapon": ("a chemical warfare agent", "it has been used as a weapon and is banned by the Chemical Weapons Convention"),
    "chemical weapon precursor": ("a chemical weapons precursor", "it can be converted into chemical warfare agents"),
    "controlled substance": ("a controlled drug", "it is a drug of abuse under international drug control"),
    "drug precursor": ("a drug precursor chemical", "it is used to make illicit drugs and is under precursor control"),
    "explosive": ("a high explosive", "it detonates and is used in munitions and blasting"),
    "explosive precursor": ("an explosives precursor", "it can be used to make improvised explosives"),
    "industrial": ("an industrial chemical", "it is produced in bulk for manufacturing"),
    "laboratory": ("a common laboratory reagent", "it is used as a solvent or reagent in teaching and research labs"),
    "pharmaceutical": ("an essential medicine", "it is prescribed to treat patients"),
    "hazardous-but-legitimate": ("a hazardous chemical in lawful use", "it is used in industry and agriculture with safety precautions"),
}


@dataclass(frozen=True)
class Facts:
    what: str  # "a chemical warfare agent"
    use: str  # "it has been used as a weapon ..."
    listed_in: str  # the public source column ("" when unknown)


def facts(category: str, source: str = "") -> Facts:
    what, use = _KNOWN.get(category.strip().lower(), (f"a chemical of the category {category}",
                                                      f"it is described as {category}"))
    return Facts(what, use, source.strip())


def listed_clause(f: Facts) -> str:
    """", listed in <source>" (empty when the source is unknown)."""
    return f", listed in {f.listed_in}" if f.listed_in else ""
