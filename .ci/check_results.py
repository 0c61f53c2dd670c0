"""Summarise the junit XML of a test run; exit non-zero on failures, on no test run, and (CI=true) on skips
that the allowlist does not name with a reason.  Usage: check_results.py RESULTS_DIR ALLOWLIST"""

from __future__ import annotations

import fnmatch
import glob
import os
import sys
import xml.etree.ElementTree as ET


def read_allowlist(path: str) -> list[tuple[str, str]]:
    entries = []
    if not os.path.isfile(path):
        return entries
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, reason = (part.strip() for part in line.partition("|"))
        if not pattern or not reason:
            sys.exit(f"ci: FAILED: {path}:{n}: an allowed skip needs '<test id pattern> | <reason>'")
        entries.append((pattern, reason))
    return entries


def test_id(case: ET.Element) -> str:
    """junit's classname "tests.test_x" (or "tests.test_x.TestClass") + name -> "tests/test_x.py::name"."""
    parts = (case.get("classname") or "").split(".")
    mods = [p for p in parts if not p[:1].isupper()]
    classes = [p for p in parts if p[:1].isupper()]
    return "::".join(["/".join(mods) + ".py", *classes, case.get("name", "")])


def main(results_dir: str, allowlist: str) -> int:
    allowed = read_allowlist(allowlist)
    total = failed = 0
    skipped: list[tuple[str, str]] = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.xml"))):
        for case in ET.parse(path).getroot().iter("testcase"):
            total += 1
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
            skip = case.find("skipped")
            if skip is not None:
                skipped.append((test_id(case), skip.get("message", "")))
    ran = total - len(skipped)
    print(f"ci: {ran - failed} passed, {failed} failed, {len(skipped)} skipped")
    if ran == 0:
        print("ci: FAILED: no test ran")
        return 1
    unexpected = [(tid, msg) for tid, msg in skipped if not any(fnmatch.fnmatchcase(tid, p) for p, _ in allowed)]
    for tid, msg in skipped:
        print(f"ci: skipped {tid}: {msg}{'' if (tid, msg) not in unexpected else '  <- not in ' + allowlist}")
    if unexpected and os.environ.get("CI", "").lower() == "true":
        print(f"ci: FAILED: {len(unexpected)} skip(s) not listed in {allowlist} (add '<test id> | <reason>' or fix)")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
