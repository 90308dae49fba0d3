"""The fuzz suite of issue 15: every surface's cases, run in worker subprocesses (tests/fuzz/harness.py).

Each test fails listing every failing case (id, class of failure, message, the file that should fix it) and
prints the number of cases it ran. ``FUZZ_REPORT=path`` also writes the failing verdicts there as JSON
(``path.<surface>.json``); ``FUZZ_KEEP=1`` keeps the cases' temporary files.
"""

import json
import os

import pytest

from tests.fuzz.harness import SURFACES, report, run_surface

SUMMARY: list[str] = []  # one line per surface, printed at the end of the session (conftest.py)


@pytest.mark.parametrize("surface", [s for s in SURFACES if s != "selftest"])
def test_surface(surface):
    n, failures, stats = run_surface(surface)
    text = report(surface, n, failures, stats)
    SUMMARY.append(text.splitlines()[0])
    print(text)
    if os.environ.get("FUZZ_REPORT"):
        path = f"{os.environ['FUZZ_REPORT']}.{surface}.json"
        with open(path, "w") as f:
            json.dump({"cases": n, "stats": stats, "failures": failures}, f, indent=1)
    assert n > 0
    assert not failures, text
