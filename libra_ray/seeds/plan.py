"""The seed plan of a synth config: the one function both the CLI's pre-flight check and synth's phase 1
call, so the check and the run can never disagree."""

from __future__ import annotations

from typing import TYPE_CHECKING

from libra_ray.seeds.catalogue import CATALOGUE_PATH, CLASSES, CatalogueError, load_catalogue
from libra_ray.seeds.sampler import Seed, make_seeds, sample_compounds

if TYPE_CHECKING:
    from libra_ray.synth.config import SynthConfig


class SeedsError(ValueError):
    """A seeds CSV or seed count the user can fix; the message is one line naming the file, row or key."""


def plan_seeds(synth: "SynthConfig") -> list[Seed]:
    """Load and validate `synth.seeds_csv` (None = the shipped catalogue), check that it holds enough
    compounds of each class for `synth.forms`, and sample the balanced seed (deterministic by `synth.seed`).

    Raises SeedsError (one line) for a bad or empty CSV and for counts larger than the catalogue."""
    source = synth.seeds_csv or str(CATALOGUE_PATH)
    try:
        compounds = load_catalogue(synth.seeds_csv)
    except CatalogueError as err:
        raise SeedsError(f"synth.seeds_csv: {err.one_line}") from None
    wanted = {"legitimate": synth.num_legitimate, "illegitimate": synth.num_illegitimate}
    forms = list(synth.forms)
    for cls in CLASSES:
        # Same eligibility rule as sample_compounds: with TEXT every compound counts, SMILES alone needs one.
        available = sum(c.cls == cls and (bool(c.smiles) or "TEXT" in forms) for c in compounds)
        if wanted[cls] > available:
            with_smiles = " with a SMILES" if "TEXT" not in forms else ""
            raise SeedsError(f"synth.num_{cls}={wanted[cls]} but {source} holds only {available} {cls} "
                             f"compounds{with_smiles} (forms {', '.join(forms)})")
    picked = sample_compounds(compounds, synth.num_legitimate, synth.num_illegitimate, seed=synth.seed, forms=forms)
    return make_seeds(picked, forms)
