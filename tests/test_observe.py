"""The access log line, written without the logging module's record and handler layers: the
same shape as every other log line, keys masked, and silenced by a level above INFO."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest

from financeatp.observe import ACCESS_LOG


@pytest.fixture
def level() -> Iterator[Callable[[int], None]]:
    """Sets the access logger's level, as LOG_LEVEL does for the server, for one test."""
    logger = logging.getLogger("financeatp.access")
    before = logger.level
    yield logger.setLevel
    logger.setLevel(before)


def test_access_line_has_the_log_shape_and_masks_keys(
    capsys: pytest.CaptureFixture[str], level: Callable[[int], None]
) -> None:
    level(logging.INFO)
    ACCESS_LOG.write(
        {"route": "/users/{user_id}", "path": "/users/sk_live_abcdef0123", "status": 200}
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert list(entry)[:4] == ["ts", "level", "logger", "message"]
    assert entry["level"] == "info" and entry["logger"] == "financeatp.access"
    assert entry["message"] == "request" and entry["status"] == 200
    assert entry["path"] == "/users/sk_live_****"
    assert entry["ts"].endswith("Z") and len(entry["ts"]) == len("2026-12-02T17:00:00.000Z")


def test_a_level_above_info_silences_it(
    capsys: pytest.CaptureFixture[str], level: Callable[[int], None]
) -> None:
    level(logging.WARNING)
    ACCESS_LOG.write({"status": 200})
    assert capsys.readouterr().out == ""
