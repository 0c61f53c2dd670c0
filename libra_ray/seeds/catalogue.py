"""The seed catalogue: chemical compounds with their class (legitimate / illegitimate), category and
public source. Identity data only (names, SMILES); never procedures.

The shipped `catalogue.csv` holds >= 800 real compounds per class (the paper's 632:632 with a margin):
controlled substances (DEA schedules, UN 1961/1971 conventions, new psychoactive substances), drug
precursors (DEA List I, EU 273/2004), CWC schedule chemicals and Australia Group precursors, explosives
and explosive precursors (EU Reg. 2019/1148, US CFATS) on the illegitimate side; industrial (OECD HPV,
food additives), laboratory, pharmaceutical (WHO EML, non-controlled) and hazardous-but-legitimate
(GHS-classified) chemicals on the other. Mixtures and polymers have no SMILES and are TEXT-only.
`libra-ray seeds check` compares every SMILES with an offline reference (libra_ray/seeds/check.py).
Users can load their own CSV with the same columns.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

CLASSES = ("legitimate", "illegitimate")
COLUMNS = ("compound_id", "name", "smiles", "class", "category", "source")
REQUIRED_COLUMNS = ("name", "class", "category")
CATALOGUE_PATH = Path(__file__).with_name("catalogue.csv")


class CatalogueError(ValueError):
    """A catalogue with problems; `problems` lists each one with its CSV line number."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        super().__init__(f"seed catalogue {source}: {len(problems)} problem(s):\n  {shown}")
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        self.one_line = f"{source}: {problems[0]}{more}"  # for one-line CLI errors


@dataclass(frozen=True)
class Compound:
    compound_id: str
    name: str
    smiles: str  # canonical RDKit SMILES, "" when the compound has none (mixtures, proteins, polymers)
    cls: str  # "legitimate" | "illegitimate"
    category: str
    source: str

    def to_row(self) -> dict:
        return {"compound_id": self.compound_id, "name": self.name, "smiles": self.smiles, "class": self.cls,
                "category": self.category, "source": self.source}


def slugify(name: str) -> str:
    """A compound id from its name: lower-case letters and digits of any script, runs of the rest as "-"
    (ASCII names as before; "咖啡因" or "Зарин" keep their letters instead of becoming "")."""
    return re.sub(r"[\W_]+", "-", name.lower()).strip("-")


def canonical_smiles(smiles: str) -> str | None:
    """RDKit canonical SMILES (stereo kept), or None when RDKit cannot parse it."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def load_catalogue(path: str | Path | None = None, *, check_smiles: bool = True) -> list[Compound]:
    """Read and validate a catalogue CSV (None = the shipped one).

    Every problem is collected with its line number and reported at once (`CatalogueError`):
    missing columns, empty or odd names, unknown classes, empty categories, duplicate ids, and
    SMILES that RDKit cannot parse. Valid SMILES are canonicalised. Nothing is silently dropped.
    """
    file = Path(path) if path is not None else CATALOGUE_PATH
    if not file.is_file():
        raise CatalogueError(str(file), ["is a directory, not a CSV file" if file.is_dir() else "file does not exist"])
    try:
        with file.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if not header:
                raise CatalogueError(str(file), [f"the file is empty; expected a header line {','.join(COLUMNS)}"])
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise CatalogueError(str(file), [f"line 1: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}"])
            raw_rows = list(reader)
    except UnicodeDecodeError as err:
        raise CatalogueError(str(file), [f"not UTF-8 text (byte {err.start}): save the CSV as UTF-8"]) from None
    problems: list[str] = []
    compounds: list[Compound] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(raw_rows, start=2):
        name = (row.get("name") or "").strip()
        label = f"line {line} ({name or 'no name'})"
        bad = False
        if not name or len(name) > 200 or any(not c.isprintable() for c in name):
            problems.append(f"{label}: name must be 1-200 printable characters")
            bad = True
        cls = (row.get("class") or "").strip().lower()
        if cls not in CLASSES:
            problems.append(f"{label}: class {row.get('class')!r} must be one of {', '.join(CLASSES)}")
            bad = True
        category = (row.get("category") or "").strip()
        if not category:
            problems.append(f"{label}: empty category")
            bad = True
        compound_id = (row.get("compound_id") or "").strip() or slugify(name)
        if compound_id in seen:
            problems.append(f"{label}: duplicate compound_id {compound_id!r} (first on line {seen[compound_id]})")
            bad = True
        seen.setdefault(compound_id, line)
        smiles = (row.get("smiles") or "").strip()
        if smiles and check_smiles:
            canonical = canonical_smiles(smiles)
            if canonical is None:
                problems.append(f"{label}: invalid SMILES {smiles!r} (RDKit cannot parse it)")
                bad = True
            else:
                smiles = canonical
        if not bad:
            compounds.append(Compound(compound_id, name, smiles, cls, category, (row.get("source") or "").strip()))
    if problems:
        raise CatalogueError(str(file), problems)
    if not compounds:
        raise CatalogueError(str(file), ["no compounds: the file has a header but no rows"])
    return compounds
