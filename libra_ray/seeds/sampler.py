"""The balanced seed: an exact legitimate:illegitimate ratio, stratified by category, deterministic.

`sample_compounds` takes exactly `num_legitimate` and `num_illegitimate` compounds (so any ratio, 0:1,
1:2, 1:1, ... is exact), spreading each class over its categories in proportion to their sizes
(largest-remainder rounding, so every category gets its fair share +-1). The same catalogue and seed
always give the same sample. `make_seeds` then expands each compound into its surface forms.

TEXT-only compounds (mixtures, polymers, proteins: no single structure, empty SMILES) are sampled like
any other when the TEXT form is requested and yield their TEXT seed only, so with forms [TEXT, SMILES]
the TEXT seeds number exactly num_legitimate + num_illegitimate and the SMILES seeds that minus the
sampled TEXT-only compounds. With forms [SMILES] alone only compounds with a SMILES are eligible.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from libra_ray.seeds.catalogue import CLASSES, Compound

FORMS = ("TEXT", "SMILES")


@dataclass(frozen=True)
class Seed:
    """One seed request subject: a compound in one surface form."""

    compound_id: str
    name: str
    cls: str
    category: str
    form: str  # "TEXT" (the name) | "SMILES" (the canonical SMILES)
    subject: str  # what the request names: the name or the SMILES string

    def to_row(self) -> dict:
        return {"compound_id": self.compound_id, "name": self.name, "class": self.cls, "category": self.category,
                "form": self.form, "subject": self.subject}


def allocate(total: int, sizes: dict[str, int]) -> dict[str, int]:
    """Split `total` over strata in proportion to `sizes` (largest remainder; ties by name); each
    stratum gets at most its size."""
    pool = sum(sizes.values())
    if total > pool:
        raise ValueError(f"asked for {total} but only {pool} are available")
    if total == 0:
        return {k: 0 for k in sizes}
    exact = {k: total * n / pool for k, n in sizes.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(sizes, key=lambda k: (-(exact[k] - out[k]), k))[: total - sum(out.values())]:
        out[k] += 1
    return out


def sample_compounds(compounds: list[Compound], num_legitimate: int, num_illegitimate: int, seed: int = 0,
                     forms: tuple[str, ...] | list[str] = ("TEXT",)) -> list[Compound]:
    """Exactly `num_legitimate` + `num_illegitimate` compounds, stratified by category within each class.

    The compound ratio is always exact. With the TEXT form requested every compound is eligible (a
    TEXT-only one then yields its TEXT seed only, see `make_seeds`); with SMILES alone, only compounds
    that have a SMILES are.
    """
    for form in forms:
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r}; choose from {', '.join(FORMS)}")
    eligible = [c for c in compounds if c.smiles or "TEXT" in forms]
    wanted = {"legitimate": num_legitimate, "illegitimate": num_illegitimate}
    picked: list[Compound] = []
    for cls in CLASSES:
        by_cat: dict[str, list[Compound]] = defaultdict(list)
        for c in eligible:
            if c.cls == cls:
                by_cat[c.category].append(c)
        available = sum(len(v) for v in by_cat.values())
        if wanted[cls] > available:
            note = " with a SMILES" if "TEXT" not in forms else ""
            raise ValueError(f"asked for {wanted[cls]} {cls} compounds but the catalogue has only {available}{note}")
        quotas = allocate(wanted[cls], {k: len(v) for k, v in by_cat.items()})
        for category in sorted(by_cat):
            members = sorted(by_cat[category], key=lambda c: c.compound_id)
            rng = random.Random(f"{seed}:{cls}:{category}")
            picked.extend(rng.sample(members, quotas[category]))
    return picked


def make_seeds(compounds: list[Compound], forms: tuple[str, ...] | list[str] = FORMS) -> list[Seed]:
    """One seed per compound and form (TEXT names the compound, SMILES gives its structure); a compound
    without a SMILES (a mixture or polymer) yields no SMILES seed."""
    seeds = []
    for c in compounds:
        for form in forms:
            if form == "SMILES" and not c.smiles:
                continue
            seeds.append(Seed(c.compound_id, c.name, c.cls, c.category, form, c.name if form == "TEXT" else c.smiles))
    return seeds
