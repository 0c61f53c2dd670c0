"""`libra-ray seeds check`: every catalogue SMILES compared with an offline reference by InChIKey.

The reference is the identifier database bundled with the `chemicals` package (names, CAS numbers,
SMILES, InChIKeys; no network). Each compound is looked up by its full name, never by an acronym or a
code name (acronyms collide: DOM, PMA, EDC, NMP, MET resolve to other compounds there). Our InChIKey
is computed by RDKit from the catalogue's SMILES, and the two are compared:

- match:        identical InChIKey
- stereo:       same connectivity (first InChIKey block), different or missing stereo
- salt/charge:  same standardised parent (largest fragment, neutralised), e.g. a salt vs its free base
- explained:    the reference's entry for the name differs for a reason written down in `EXPLAINED` below:
                a name collision (the reference files another compound under the name) or a representation
                difference (a tautomer, or an inorganic written as loose ions or atoms)
- mismatch:     a different compound, unexplained: a wrong SMILES in the catalogue (exit status 1)
- unknown:      the reference does not know the name (most controlled substances), or the name is an
                acronym/code and is not looked up; shown with the reference's name for our structure
                when it knows the structure under another name (informative: a name is not checked that way)

Only names and structures are compared; nothing here is about how a compound is made.
"""

from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from libra_ray.seeds.catalogue import CATALOGUE_PATH, Compound, load_catalogue, slugify

STATUSES = ("match", "stereo", "salt/charge", "explained", "mismatch", "unknown")

# compound_id -> (the InChIKey of our structure that was checked, why the reference's entry for the name
# differs while that structure is right). Each was checked by hand against the structure the name denotes
# (formula, substituent positions); keep the reason specific. The explanation holds only for that exact
# structure: if the SMILES changes, the compound is a mismatch again until someone looks.
# Wrong SMILES do not go here: they are fixed in catalogue.csv (stanozolol, bromothymol blue, doxycycline and
# tetrazene were, when this check was introduced).
EXPLAINED: dict[str, tuple[str, str]] = {
    # name collisions: the reference files another compound under this name
    "butylone": ("CGKQZIULZRXRRJ-UHFFFAOYSA-N", "name collision: the reference files 'butylone' as an old trade "
                 "name of pentobarbital sodium; ours is the cathinone bk-MBDB"),
    "ethylsarin": ("KXKAXOZWSFAJTG-UHFFFAOYSA-N", "name collision: the reference's 'ethylsarin' is O-ethyl "
                   "methylphosphonofluoridate (CAS 673-97-2); ours is GE, O-isopropyl ethylphosphonofluoridate "
                   "(CAS 1189-87-3)"),
    "bis-2-chloroethylthiomethyl-ether": ("IJGBNRTYNRKNHS-UHFFFAOYSA-N", "name collision: the reference resolves "
                                          "the name to bis(2-chloroethylthio)methane, a different CWC Schedule 1 "
                                          "mustard (ours: CAS 63918-90-1)"),
    # representation differences: the same compound, drawn differently in the reference
    "chlordiazepoxide": ("ANTSCNMPPGJYLG-UHFFFAOYSA-N",
                         "representation: the reference draws the 4-oxide as an N-hydroxy tautomer"),
    "minoxidil": ("ZFMITUMMTDLWHR-UHFFFAOYSA-N",
                  "representation: the reference draws the 3-oxide as an N-hydroxy tautomer"),
    "olanzapine": ("KVWDHTXUZHCGIO-UHFFFAOYSA-N",
                   "representation: the reference draws the 4H amidine tautomer; ours is the usual 10H form"),
    "dimethyl-phosphite": ("HZCDANOFLILNSA-UHFFFAOYSA-N",
                           "representation: the reference writes the H-phosphonate as [P+] without its P-H"),
    "diethyl-phosphite": ("MJUJXFBTEFXVKU-UHFFFAOYSA-N",
                          "representation: the reference writes the H-phosphonate as [P+] without its P-H"),
    "mercury-fulminate": ("AUXQRZIGZMRZBW-UHFFFAOYSA-N",
                          "representation: the reference writes loose atoms ([C]#[N+][O-] and [Hg]), no charges"),
    "lithium-aluminium-hydride": ("OCZDCIYGECBNKL-UHFFFAOYSA-N",
                                  "representation: the reference writes [Al+3] and four [H-] instead of [AlH4-]"),
    "arsenic-trioxide": ("IKWTVSLWAPBBKU-UHFFFAOYSA-N",
                         "representation: the reference writes the oxide as ions ([As+3], [O-2])"),
    "glucose": ("WQZGKKKJIJFFOK-UHFFFAOYSA-N",
                "representation: the reference draws open-chain D-glucose; ours is the pyranose ring"),
    "white-phosphorus": ("OBSZRRSYVTXPNB-UHFFFAOYSA-N",
                         "representation: the reference has one entry for the element ([P]); ours is the P4 molecule"),
}

INSTALL_HINT = ("the seeds check needs the optional package 'chemicals': "
                "pip install 'libra-ray[chem]' (or pip install chemicals)")


class MissingReference(RuntimeError):
    """The optional `chemicals` package is not installed."""


@dataclass(frozen=True)
class CheckRow:
    line: int  # CSV line of the compound
    compound_id: str
    name: str
    status: str  # one of STATUSES
    ours: str  # our InChIKey ("" for a TEXT-only compound)
    reference: str  # the reference's InChIKey for the name (for an unknown name: for our structure), or ""
    reference_name: str  # the reference's common name for what it found
    note: str = ""


@dataclass
class CheckReport:
    csv: str
    rows: list[CheckRow]
    seconds: float
    text_only: int

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows) for s in STATUSES}

    @property
    def clean(self) -> bool:
        return self.counts()["mismatch"] == 0

    def to_json(self) -> dict:
        return {"csv": self.csv, "compounds_with_smiles": len(self.rows), "text_only": self.text_only,
                "counts": self.counts(), "seconds": round(self.seconds, 2), "clean": self.clean,
                "explained": {k: reason for k, (_key, reason) in EXPLAINED.items()}, "rows": [asdict(r) for r in self.rows]}


def _search():
    try:
        from chemicals.identifiers import search_chemical
    except ImportError as err:
        raise MissingReference(INSTALL_HINT) from err
    return _cached(search_chemical)


@lru_cache(maxsize=None)
def _cached(search):
    @lru_cache(maxsize=None)
    def lookup(query: str):
        try:
            return search(query)
        except Exception:  # noqa: BLE001 - the reference raises ValueError for what it does not know
            return None

    return lookup


# A code or acronym: two capitals in a row (MDMA, VX, JWH-018, alpha-PVP, HEPES), a digit before a capital
# (2C-B, 5F-AMB) or a letter code (U-47700, A-230); such names are not looked up: they collide in the reference.
# Oxidation states such as "(II)" are not codes.
_CODE_WORD = re.compile(r"[A-Z][A-Z0-9]|[0-9][A-Z]|^[A-Z]-?[0-9]")
_OXIDATION_STATE = re.compile(r"\([IVX]+\)")


def lookup_names(name: str) -> list[str]:
    """The full names to look a compound up by: the name and, for "Name (other name)", both parts;
    parts that are acronyms or code names are left out."""
    parts = [name]
    m = re.fullmatch(r"(.+?)\s*\((.+)\)", name)
    if m and not re.search(r"\)\S", name):  # "X (Y)" but not a systematic name such as "Bis(2-chloroethyl) ether"
        parts = [m.group(1), m.group(2)]
    return [p for p in parts
            if not any(_CODE_WORD.search(w) for w in re.split(r"[\s,]+", _OXIDATION_STATE.sub("", p)) if w)]


@lru_cache(maxsize=None)  # checking a second CSV in the same process recomputes only what changed
def _keys(smiles: str) -> tuple[str, str]:
    """(InChIKey, InChIKey of the standardised parent: largest fragment, neutralised)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem.MolStandardize import rdMolStandardize

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return "", ""
    try:
        parent = rdMolStandardize.ChargeParent(mol)
    except Exception:  # noqa: BLE001 - exotic inorganics; compare the molecule itself
        parent = mol
    return Chem.MolToInchiKey(mol), Chem.MolToInchiKey(parent)


def _parser_artifact(name: str, hit) -> bool:
    """The reference answers some names it does not know with an element it read out of them
    ("N-Methyl-2-pyrrolidone" -> nitride): a one-atom hit whose name shares no word with ours."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(hit.smiles)
    if mol is None or mol.GetNumHeavyAtoms() > 1:
        return False
    words = {w for w in re.findall(r"[a-z]{4,}", name.lower())}
    return not words & set(re.findall(r"[a-z]{4,}", (hit.common_name or "").lower()))


def compare(ours: tuple[str, str], ref: tuple[str, str]) -> str:
    """match / stereo / salt/charge / mismatch for two (InChIKey, parent InChIKey) pairs."""
    (key, parent), (rkey, rparent) = ours, ref
    if not key or not rkey:
        return "mismatch"
    if key == rkey:
        return "match"
    if key[:14] == rkey[:14]:
        return "stereo"
    if parent and rparent and (parent == rparent or parent[:14] == rparent[:14]):
        return "salt/charge"
    return "mismatch"


def _lines(path: Path) -> dict[str, int]:
    """compound_id -> CSV line, with the same id rule as load_catalogue."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return {((row.get("compound_id") or "").strip() or slugify((row.get("name") or "").strip())): reader.line_num
                for row in reader}


def check_catalogue(path: str | Path | None = None) -> CheckReport:
    """Compare every SMILES of a catalogue CSV (None = the shipped one) with the reference.

    Raises CatalogueError for a bad file and MissingReference when `chemicals` is not installed."""
    search = _search()
    file = Path(path) if path is not None else CATALOGUE_PATH
    compounds = load_catalogue(file)
    lines = _lines(file)
    started = time.perf_counter()
    rows = [_check_one(c, lines.get(c.compound_id, 0), search) for c in compounds if c.smiles]
    return CheckReport(str(file), rows, time.perf_counter() - started, sum(not c.smiles for c in compounds))


def _check_one(c: Compound, line: int, search) -> CheckRow:
    ours = _keys(c.smiles)
    names = lookup_names(c.name)
    found = []
    for name in names:
        hit = search(name)
        if hit is not None and hit.smiles and not _parser_artifact(name, hit):
            found.append(hit)
    if not found:
        note = "acronym or code name: not looked up" if not names else "name unknown to the reference"
        same = search(f"InChIKey={ours[0]}")  # does the reference know our structure under another name?
        return CheckRow(line, c.compound_id, c.name, "unknown", ours[0], same.InChI_key if same else "",
                        same.common_name if same else "", note)
    results = [(compare(ours, _keys(h.smiles)), h) for h in found]
    rank = {s: i for i, s in enumerate(STATUSES)}
    status, hit = min(results, key=lambda r: rank[r[0]])
    ref_key = hit.InChI_key or _keys(hit.smiles)[0]
    note = ""
    vetted_key, reason = EXPLAINED.get(c.compound_id, ("", ""))
    if status == "mismatch" and vetted_key == ours[0]:
        status, note = "explained", reason
    elif status == "mismatch":
        note = f"reference SMILES {hit.smiles} (CAS {hit.CASs})"
    return CheckRow(line, c.compound_id, c.name, status, ours[0], ref_key, hit.common_name, note)


def render_markdown(report: CheckReport) -> str:
    counts = report.counts()
    out = [f"# Seeds check: {report.csv}", "",
           f"{len(report.rows)} compounds with a SMILES ({report.text_only} TEXT-only not compared), "
           f"checked against the `chemicals` identifier database by InChIKey in {report.seconds:.1f} s.", "",
           "| status | compounds |", "|---|---|"]
    out += [f"| {s} | {counts[s]} |" for s in STATUSES]
    for status in ("mismatch", "explained", "stereo", "salt/charge"):
        rows = [r for r in report.rows if r.status == status]
        if rows:
            out += ["", f"## {status} ({len(rows)})", "", "| line | compound | reference name | note |", "|---|---|---|---|"]
            out += [f"| {r.line} | {r.name} | {r.reference_name} | {r.note} |" for r in rows]
    unknown = [r for r in report.rows if r.status == "unknown"]
    if unknown:
        known = sum(bool(r.reference_name) for r in unknown)
        out += ["", f"## unknown to the reference ({len(unknown)})", "",
                f"Not looked up (acronym or code name) or a name the reference lacks; for {known} of them the "
                "reference knows our structure under the name shown after '='.", "",
                ", ".join(f"{r.line}: {r.name}" + (f" (= {r.reference_name})" if r.reference_name else "")
                          for r in unknown)]
    verdict = ("clean: no unexplained mismatch" if report.clean else
               f"NOT clean: {counts['mismatch']} unexplained mismatch(es); fix the SMILES or, if the reference's "
               "name is another compound or the same one drawn differently, explain it in libra_ray/seeds/check.py EXPLAINED")
    out += ["", f"**{verdict}**"]
    return "\n".join(out) + "\n"


def write_json(report: CheckReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")


# ---- `libra-ray seeds check` ---------------------------------------------------------------------
def add_seeds_args(parser) -> None:
    sub = parser.add_subparsers(dest="seeds_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("check", help="compare every catalogue SMILES with the chemicals reference by InChIKey",
                       description="Compare every catalogue SMILES with the offline `chemicals` identifier database "
                                   "by InChIKey. Exit 0 when clean, 1 on unexplained mismatches, 2 on a bad file.")
    p.add_argument("--csv", help="catalogue CSV to check (default: the shipped libra_ray/seeds/catalogue.csv)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write every row and the counts as JSON")


def seeds_command(args) -> int:
    import sys

    from libra_ray.seeds.catalogue import CatalogueError

    try:
        report = check_catalogue(args.csv)
    except MissingReference as err:
        print(f"libra-ray seeds check: {err}", file=sys.stderr)
        return 2
    except CatalogueError as err:
        print(f"libra-ray seeds check: {err.one_line}", file=sys.stderr)
        return 2
    print(render_markdown(report), end="")
    if args.json_path:
        write_json(report, args.json_path)
    return 0 if report.clean else 1
