"""Seed catalogue and balanced sampler: real compounds, RDKit-valid SMILES, exact ratio, stratification."""

from __future__ import annotations

from collections import Counter

import pytest

from libra_ray.seeds import CatalogueError, allocate, load_catalogue, make_seeds, sample_compounds
from libra_ray.seeds.catalogue import CATALOGUE_PATH


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue()


def test_shipped_catalogue_is_large_valid_and_rdkit_canonical(catalogue):
    from rdkit import Chem

    counts = Counter(c.cls for c in catalogue)
    with_smiles = Counter(c.cls for c in catalogue if c.smiles)
    # The paper's 632:632 with a margin, in both forms (jobs/full_scale.yaml samples 632 per class).
    assert counts["legitimate"] >= 700 and counts["illegitimate"] >= 700
    assert with_smiles["legitimate"] >= 632 and with_smiles["illegitimate"] >= 632
    per_category = Counter((c.cls, c.category) for c in catalogue)
    assert min(per_category.values()) >= 25, per_category
    names = [c.name.lower() for c in catalogue]
    assert len(set(names)) == len(names)  # one row per compound name
    for c in catalogue:
        assert c.source and c.category
        if c.smiles:  # every structure parses and is already canonical after loading
            assert Chem.MolToSmiles(Chem.MolFromSmiles(c.smiles)) == c.smiles
    assert len({c.compound_id for c in catalogue}) == len(catalogue)
    # One structure never sits in both classes (names differ but a structure is one compound).
    by_smiles = {}
    for c in catalogue:
        if c.smiles:
            assert by_smiles.setdefault(c.smiles, c.cls) == c.cls, c.name
    cats = {c.category for c in catalogue}
    assert {"controlled substance", "chemical weapon", "explosive precursor", "industrial", "laboratory",
            "pharmaceutical", "hazardous-but-legitimate"} <= cats


def test_known_structures_have_the_right_formula(catalogue):
    from rdkit import Chem
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    by_name = {c.name: c for c in catalogue}
    expected = {"Fentanyl": "C22H28N2O", "Morphine": "C17H19NO3", "Sarin": "C4H10FO2P", "VX": "C11H26NO2PS",
                "Aspirin": "C9H8O4", "Caffeine": "C8H10N4O2", "Testosterone": "C19H28O2", "Thebaine": "C19H21NO3"}
    for name, formula in expected.items():
        assert CalcMolFormula(Chem.MolFromSmiles(by_name[name].smiles)) == formula, name


def test_bad_rows_are_reported_with_their_line(tmp_path):
    bad = tmp_path / "seeds.csv"
    bad.write_text("compound_id,name,smiles,class,category,source\n"
                   "a,Aspirin,CC(=O)OC1=CC=CC=C1C(O)=O,legitimate,pharmaceutical,x\n"
                   "b,Broken,C1CC(,legitimate,industrial,x\n"
                   "c,,CCO,legitimate,industrial,x\n"
                   "d,Thing,CCO,maybe,industrial,x\n"
                   "a,Again,CCO,legitimate,industrial,x\n")
    with pytest.raises(CatalogueError) as err:
        load_catalogue(bad)
    problems = err.value.problems
    assert any(p.startswith("line 3 (Broken): invalid SMILES") for p in problems)
    assert any(p.startswith("line 4 (no name): name") for p in problems)
    assert any(p.startswith("line 5 (Thing): class") for p in problems)
    assert any(p.startswith("line 6 (Again): duplicate compound_id 'a'") for p in problems)
    missing = tmp_path / "cols.csv"
    missing.write_text("name,smiles\nEthanol,CCO\n")
    with pytest.raises(CatalogueError, match="missing column"):
        load_catalogue(missing)


def test_user_csv_without_ids_or_smiles(tmp_path):
    own = tmp_path / "own.csv"
    own.write_text("name,class,category\nEthanol,legitimate,industrial\nRicin,illegitimate,toxin\n")
    comps = load_catalogue(own)
    assert [c.compound_id for c in comps] == ["ethanol", "ricin"] and comps[0].smiles == ""
    assert sample_compounds(comps, 1, 1, forms=["TEXT"])
    with pytest.raises(ValueError, match="with a SMILES"):
        sample_compounds(comps, 1, 1, forms=["SMILES"])


@pytest.mark.parametrize("legit,illegit", [(0, 60), (30, 60), (60, 60), (7, 13), (300, 300), (632, 632)])
def test_exact_ratio_and_stratification(catalogue, legit, illegit):
    picked = sample_compounds(catalogue, legit, illegit, seed=3, forms=["TEXT", "SMILES"])
    counts = Counter(c.cls for c in picked)
    assert counts["legitimate"] == legit and counts["illegitimate"] == illegit
    assert len({c.compound_id for c in picked}) == len(picked)
    for cls, n in (("legitimate", legit), ("illegitimate", illegit)):
        pool = Counter(c.category for c in catalogue if c.cls == cls)  # with TEXT, TEXT-only compounds count too
        got = Counter(c.category for c in picked if c.cls == cls)
        for cat, size in pool.items():  # proportional within +-1
            assert abs(got[cat] - n * size / sum(pool.values())) < 1.0, (cls, cat)
    seeds = make_seeds(picked, ["TEXT", "SMILES"])
    # Every compound has its TEXT seed; only those with a structure have a SMILES seed.
    assert Counter(s.form for s in seeds) == {"TEXT": len(picked), "SMILES": sum(bool(c.smiles) for c in picked)}
    assert all(s.subject == s.name for s in seeds if s.form == "TEXT") and all(s.subject for s in seeds)


def test_text_only_compounds_are_sampled_for_text_only(catalogue):
    text_only = {c.compound_id for c in catalogue if not c.smiles}
    assert {c.cls for c in catalogue if not c.smiles} == {"legitimate", "illegitimate"}  # mixtures, polymers
    picked = sample_compounds(catalogue, 700, 700, seed=0, forms=["TEXT", "SMILES"])
    assert text_only & {c.compound_id for c in picked}  # eligible with the TEXT form ...
    seeds = make_seeds(picked, ["TEXT", "SMILES"])
    assert not [s for s in seeds if s.form == "SMILES" and s.compound_id in text_only]  # ... but never as SMILES
    smiles_only = sample_compounds(catalogue, 600, 600, seed=0, forms=["SMILES"])
    assert not text_only & {c.compound_id for c in smiles_only}


def test_sampling_is_deterministic_by_seed(catalogue):
    a = [c.compound_id for c in sample_compounds(catalogue, 20, 20, seed=1)]
    b = [c.compound_id for c in sample_compounds(catalogue, 20, 20, seed=1)]
    c = [c.compound_id for c in sample_compounds(catalogue, 20, 20, seed=2)]
    assert a == b and a != c


def test_allocate_and_overdraw():
    assert allocate(10, {"a": 5, "b": 5}) == {"a": 5, "b": 5}
    assert allocate(3, {"a": 1, "b": 1, "c": 1, "d": 1}) == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert sum(allocate(7, {"x": 13, "y": 29, "z": 2}).values()) == 7
    with pytest.raises(ValueError, match="only"):
        sample_compounds(load_catalogue(CATALOGUE_PATH), 10_000, 0)
