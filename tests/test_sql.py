"""Runs every pgTAP file in tests/sql against its own copy of the migrated database."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

SQL_DIR = Path(__file__).parent / "sql"
FILES = sorted(SQL_DIR.glob("*.sql"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_pgtap(path: Path, database: str) -> None:
    result = subprocess.run(
        ["psql", database, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    plan = re.search(r"^\s*1\.\.(\d+)\s*$", result.stdout, re.MULTILINE)
    assert plan, f"no TAP plan in output:\n{output}"
    oks = re.findall(r"^\s*ok \d+", result.stdout, re.MULTILINE)
    failures = re.findall(r"^\s*not ok \d+.*$", result.stdout, re.MULTILINE)
    assert not failures, output
    assert len(oks) == int(plan.group(1)), f"planned {plan.group(1)}, passed {len(oks)}:\n{output}"
