"""README.md's DBA walkthrough ("Using it from psql") runs as written: psql, as a superuser, on a
fresh copy of the migrated database, stopping at the first error."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def walkthrough() -> str:
    """The first sql block of the README's psql section."""
    text = README.read_text()
    section = text.split("## Using it from psql", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```sql\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block, "README.md's psql section has no sql block"
    return block.group(1)


def test_readme_psql_walkthrough(database: str, tmp_path: Path) -> None:
    script = tmp_path / "walkthrough.sql"
    script.write_text(walkthrough())
    result = subprocess.run(
        ["psql", database, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.splitlines()
    # The replayed transfer, alice's balance right after it, and the two verifiers at the end.
    assert "t" in lines, output
    assert any('"balance" : "987.50000000"' in line and '"as_of"' in line for line in lines), output
    assert "true" in lines, output
    assert '"ok": true' in lines[-1], output
