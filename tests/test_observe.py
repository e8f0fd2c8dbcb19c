"""The access log line, written without the logging module's record and handler layers: the
same shape as every other log line, keys masked, and silenced by a level above INFO."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from financeatp.observe import ACCESS_LOG, Metrics, json_line, mask_key, new_correlation_id

ROOT = Path(__file__).resolve().parent.parent
REQUEST: dict[str, Any] = {
    "method": "GET",
    "route": "/users/{user_id}",
    "path": "/users/sk_live_abcdef0123",
    "status": 200,
    "latency_ms": 1.25,
    "correlation_id": "c-1",
    "api_key_name": "nextjs",
    "api_key_prefix": "sk_live_****",
    "client": "127.0.0.1",
}


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
    ACCESS_LOG.write(**REQUEST)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert list(entry)[:4] == ["ts", "level", "logger", "message"]
    assert entry["level"] == "info" and entry["logger"] == "financeatp.access"
    assert entry["message"] == "request" and entry["status"] == 200
    assert entry["path"] == "/users/sk_live_****"
    assert entry["ts"].endswith("Z") and len(entry["ts"]) == len("2026-12-02T17:00:00.000Z")


class Writes:
    """Standard output that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_access_lines_are_written_together_soon_and_below_pipe_buf(
    monkeypatch: pytest.MonkeyPatch, level: Callable[[int], None]
) -> None:
    """In the server (an event loop runs) the lines of FLUSH_DELAY go out in one write, none
    larger than FLUSH_BYTES (under PIPE_BUF, so two workers' lines never mix in a pipe)."""
    level(logging.INFO)
    out = Writes()
    monkeypatch.setattr(sys, "stdout", out)
    wide = REQUEST | {"correlation_id": "\u4e2d" * 100}  # 300 bytes in UTF-8, 100 characters

    async def serve() -> list[str]:
        for _ in range(3):
            ACCESS_LOG.write(**REQUEST)
        assert out.writes == [], "written at once"
        await asyncio.sleep(ACCESS_LOG.FLUSH_DELAY * 2)
        assert len(out.writes) == 1 and out.writes[0].count("\n") == 3, out.writes
        out.writes.clear()
        for _ in range(40):
            ACCESS_LOG.write(**wide)
        await asyncio.sleep(ACCESS_LOG.FLUSH_DELAY * 2)
        return out.writes

    writes = asyncio.run(serve())
    assert 1 < len(writes) < 40 and sum(w.count("\n") for w in writes) == 40
    for text in writes:
        assert text.endswith("\n") and len(text.encode()) <= ACCESS_LOG.FLUSH_BYTES <= 4096
        assert all(json.loads(line)["correlation_id"] for line in text.splitlines())


def test_a_long_path_is_cut_so_that_a_line_stays_under_pipe_buf(
    capsys: pytest.CaptureFixture[str], level: Callable[[int], None]
) -> None:
    """A request line may be 16 KB: its path is cut in the access line, which a single write
    must carry below PIPE_BUF, even when every character of it is escaped."""
    level(logging.INFO)
    for path in ("/users/" + "a" * 16_000, "/" + "\x01" * 16_000):
        ACCESS_LOG.write(**(REQUEST | {"path": path}))
        ACCESS_LOG.flush()
        line = capsys.readouterr().out
        assert line.count("\n") == 1 and len(line.encode()) <= ACCESS_LOG.FLUSH_BYTES, len(line)
        logged = json.loads(line)["path"]
        assert logged == path[: ACCESS_LOG.MAX_PATH] + "\u2026"


def test_lines_still_waiting_are_written_when_the_process_exits() -> None:
    """A worker that stops within FLUSH_DELAY of its last answer (its event loop closed with the
    timer pending) writes the waiting lines on its way out."""
    program = (
        "import asyncio, logging\n"
        "from financeatp.observe import ACCESS_LOG\n"
        "logging.getLogger('financeatp.access').setLevel(logging.INFO)\n"
        "async def answer():\n"
        f"    ACCESS_LOG.write(**{REQUEST!r})\n"
        "asyncio.run(answer())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert [json.loads(line)["correlation_id"] for line in done.stdout.splitlines()] == ["c-1"]


def test_a_level_above_info_silences_it(
    capsys: pytest.CaptureFixture[str], level: Callable[[int], None]
) -> None:
    level(logging.WARNING)
    ACCESS_LOG.write(**REQUEST)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {
            "path": '/a"b\\c\nd\x01\u00e9\u4e2d\U0001f600',
            "correlation_id": "sk_test_XYZ789 and sk_live_q",
        },
        {"api_key_name": None, "api_key_prefix": None, "method": "BREW", "route": "unmatched"},
        {"api_key_name": "sk_live_abc", "latency_ms": 1234567.5, "status": 503, "client": ""},
        {"api_key_prefix": mask_key('sk"\\\u00e9x\tyz0123'), "correlation_id": ""},
    ],
)
def test_access_line_is_what_json_line_writes(
    capsys: pytest.CaptureFixture[str], level: Callable[[int], None], changes: dict[str, Any]
) -> None:
    """The access line comes from a template; every other line from the JSON encoder. For
    quotes, backslashes, control characters, non-ASCII text, nulls and key-shaped text, the two
    write the same characters."""
    level(logging.INFO)
    fields = REQUEST | changes
    ACCESS_LOG.write(**fields)
    line = capsys.readouterr().out.removesuffix("\n")
    head = {"ts": json.loads(line)["ts"], "level": "info", "logger": "financeatp.access"}
    assert line == json_line(head | {"message": "request"} | fields)
    assert "sk_live_a" not in line and "sk_test_X" not in line


def test_requests_are_published_as_prometheus_would_count_them() -> None:
    """Requests counted in plain numbers and published in one go give the exposition that a
    Counter and a Histogram fed one request at a time give, bounds included; a second publish
    adds nothing."""
    metrics = Metrics()
    reference = CollectorRegistry()
    requests = Counter("ref_requests", "", ["route", "method", "status"], registry=reference)
    latency = Histogram("ref_latency", "", ["route", "method"], registry=reference)
    observed = [
        ("/users/{user_id}/balance", "GET", 200, seconds)
        for seconds in (0.001, 0.005, 0.0050001, 0.03, 0.2, 2.5, 20.0)
    ] + [("/transfers", "POST", 201, 0.01), ("/transfers", "POST", 409, 0.012)]
    for route, method, status, seconds in observed:
        metrics.observe(route, method, status, seconds)
        requests.labels(route, method, str(status)).inc()
        latency.labels(route, method).observe(seconds)

    def samples(registry: CollectorRegistry, prefix: str) -> dict[tuple[Any, ...], float]:
        return {
            (sample.name.removeprefix(prefix), *sorted(sample.labels.items())): sample.value
            for family in registry.collect()
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    expected = samples(reference, "ref_")
    assert expected[("requests_total", ("method", "GET"), ("route", "/users/{user_id}/balance"),
                     ("status", "200"))] == 7  # fmt: skip
    metrics.exposition()
    published = {
        key: value
        for key, value in samples(metrics.registry, "atp_http_").items()
        if not key[0].startswith("atp_db_pool")
    }
    renamed = {
        (name.replace("request_duration_seconds", "latency"), *labels): value
        for (name, *labels), value in published.items()
    }
    assert renamed == pytest.approx(expected)
    metrics.publish()
    assert samples(metrics.registry, "atp_http_") == published


def test_generated_correlation_ids_are_random_uuids_in_their_usual_text() -> None:
    ids = [new_correlation_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
