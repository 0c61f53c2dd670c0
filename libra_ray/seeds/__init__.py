"""Seeds: the compound catalogue (validated, RDKit-canonical) and the balanced, stratified sampler."""

from libra_ray.seeds.catalogue import CATALOGUE_PATH, CLASSES, CatalogueError, Compound, load_catalogue
from libra_ray.seeds.plan import SeedsError, plan_seeds
from libra_ray.seeds.sampler import FORMS, Seed, allocate, make_seeds, sample_compounds

__all__ = ["CATALOGUE_PATH", "CLASSES", "CatalogueError", "Compound", "load_catalogue", "FORMS", "Seed", "allocate",
           "make_seeds", "sample_compounds", "SeedsError", "plan_seeds"]
