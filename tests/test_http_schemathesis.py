"""schemathesis against /openapi.json of a live server: every default check, zero failures.
The examples per operation are few so that the run stays within a minute or so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import Cluster
from http_fixtures import serve_fresh_database

CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = "15"


def test_schemathesis_finds_nothing(cluster: Cluster, tmp_path: Path) -> None:
    # Two workers: the multi-process path (metrics summed over processes) is served too.
    with serve_fresh_database(cluster, tmp_path / "server.log", WORKERS="2") as api:
        key = api.key(["admin"], name="schemathesis")
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file", str(CONFIG),
            "run", f"{api.server.url}/openapi.json",
            "--header", f"X-API-Key: {key}",
            "--max-examples", MAX_EXAMPLES,
            "--workers", "2",
            "--seed", "20260101",
            "--report-dir", str(tmp_path / "report"),
        ]  # fmt: skip
        # In tmp_path: schemathesis and hypothesis keep their caches in the working directory.
        result = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-20000:]
        assert "Test cases:" in output and " passed" in output
        assert key not in api.server.log_text()
