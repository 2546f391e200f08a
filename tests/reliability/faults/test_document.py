"""docs/reliability.md says what the fault tests of this session observed.

Runs after every fault test (see conftest.py). Without `RELIABILITY_DOC=write` it only
reads: each row recorded in this session must be the document's line for that fault, and
the document must have a line for every fault in FAULTS; a difference fails, naming the
command that regenerates it. With `RELIABILITY_DOC=write` (and every fault recorded) it
rewrites the document.
"""

from __future__ import annotations

import os

from tests.reliability.faults.conftest import DOC, FAULTS, REGENERATE, recorded, render, row_line


def test_reliability_doc_matches_what_the_suite_observed() -> None:
    rows = recorded()
    if os.environ.get("RELIABILITY_DOC") == "write":
        missing = [f for f, _, _ in FAULTS if f not in rows]
        assert not missing, f"not rewriting {DOC.name}: faults not recorded (failed or deselected): {missing}"
        DOC.write_text(render())
        return
    committed = DOC.read_text().splitlines() if DOC.exists() else []
    absent = [name for _, name, _ in FAULTS if not any(line.startswith(f"| {name} |") for line in committed)]
    stale = [row_line(fid) for fid in rows if row_line(fid) not in committed]
    assert not absent and not stale, (
        f"{DOC.relative_to(DOC.parents[1])} does not match what the fault suite observed; regenerate it with\n"
        f"    {REGENERATE}\nfaults without a row: {absent}\nrows observed now:\n" + "\n".join(stale)
    )
