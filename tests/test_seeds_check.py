"""`libra-ray seeds check`: the shipped catalogue agrees with the offline `chemicals` reference."""

from __future__ import annotations

import builtins
import csv
import json

import pytest

from libra_ray.cli import main
from libra_ray.seeds.catalogue import CATALOGUE_PATH
from libra_ray.seeds.check import EXPLAINED, _keys, compare, lookup_names

import chemicals  # noqa: E402  (the dev/chem extra: without it this fails, never skips)


@pytest.fixture(scope="module")
def report():
    from libra_ray.seeds.check import check_catalogue

    return check_catalogue()


def test_shipped_catalogue_has_no_unexplained_mismatch(report):
    counts = report.counts()
    mismatches = [(r.line, r.name, r.note) for r in report.rows if r.status == "mismatch"]
    assert not mismatches, mismatches
    assert counts["match"] > counts["unknown"] and sum(counts.values()) == len(report.rows)
    # The explained list does not rot: every entry names a catalogue compound that still needs it.
    explained = {r.compound_id: r.ours for r in report.rows if r.status == "explained"}
    assert explained == {cid: key for cid, (key, _reason) in EXPLAINED.items()}


def test_a_corrupted_smiles_is_a_mismatch_and_exit_1(tmp_path, capsys):
    rows = list(csv.DictReader(CATALOGUE_PATH.open(newline="", encoding="utf-8")))
    line = next(i for i, r in enumerate(rows, start=2) if r["name"] == "Aspirin")
    rows[line - 2]["smiles"] = "CC(=O)OC1=CC=CC=C1"  # phenyl acetate: the carboxylic acid is gone
    glucose = next(r for r in rows if r["compound_id"] == "glucose")  # an explained difference ...
    glucose["smiles"] = "OCC1OC(O)C(O)C1O"  # ... holds only for the vetted structure, not for a pentose
    bad = tmp_path / "catalogue.csv"
    with bad.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out_json = tmp_path / "check.json"
    assert main(["seeds", "check", "--csv", str(bad), "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert f"| {line} | Aspirin |" in out and "NOT clean: 2 unexplained mismatch" in out
    data = json.loads(out_json.read_text())
    assert data["counts"]["mismatch"] == 2 and not data["clean"]
    assert sorted(r["name"] for r in data["rows"] if r["status"] == "mismatch") == ["Aspirin", "Glucose"]


def test_statuses_from_inchikeys():
    alanine, l_alanine = _keys("CC(N)C(=O)O"), _keys("C[C@H](N)C(=O)O")
    assert compare(l_alanine, l_alanine) == "match"
    assert compare(alanine, l_alanine) == "stereo"
    assert compare(_keys("O=C(O)c1ccccc1"), _keys("O=C([O-])c1ccccc1.[Na+]")) == "salt/charge"
    assert compare(_keys("CCO"), _keys("COC")) == "mismatch"


def test_acronyms_and_codes_are_not_looked_up():
    for code in ("DOM", "PMA", "EDC", "NMP", "MET", "2C-B", "JWH-018", "U-47700", "alpha-PVP", "5F-AMB", "VX"):
        assert lookup_names(code) == [], code
    assert lookup_names("MDAI (5,6-methylenedioxy-2-aminoindane)") == ["5,6-methylenedioxy-2-aminoindane"]
    assert lookup_names("Tin(IV) chloride") == ["Tin(IV) chloride"]
    assert lookup_names("Bis(chloromethyl) ether") == ["Bis(chloromethyl) ether"]


def test_bad_file_is_one_line_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["seeds", "check", "--csv", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the file is empty" in err


def test_missing_reference_package_is_one_line_exit_2(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_chemicals(name, *args, **kwargs):
        if name.startswith("chemicals"):
            raise ImportError("No module named 'chemicals'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_chemicals)
    assert main(["seeds", "check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install" in err and "chemicals" in err
