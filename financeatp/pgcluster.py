"""PostgreSQL clusters on this machine: the embedded one of `make run`, and the throwaway ones
of the benchmarks and drills. One way to find the server binaries, a free port, and to run
PostgreSQL as the postgres system user when we are root (initdb and postgres refuse root), which
the tests use too."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path


def pg_user() -> pwd.struct_passwd | None:
    """None for an ordinary user; as root, the system user PostgreSQL runs as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise SystemExit("running as root and there is no 'postgres' user to run PostgreSQL")


def as_user(user: pwd.struct_passwd | None) -> list[str]:
    """The command prefix that runs a program as `user` (nothing when user is None)."""
    if user is None:
        return []
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on the port now. As PostgreSQL and uvicorn bind, with
    SO_REUSEADDR: the connections of a server stopped a moment ago, left in TIME_WAIT, do not
    keep it from starting again on its port; a socket listening there does."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
    return True


def pg_bindir() -> Path:
    """initdb, pg_ctl, postgres and their companions (pgbench, pg_checksums): PG_BINDIR, else
    the directory of the initdb on PATH (where a link there leads: /usr/local/bin may hold links
    to a few of them only), else Debian's newest version."""
    configured = os.environ.get("PG_BINDIR")
    if configured:
        return Path(configured)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: [int(part) for part in re.findall(r"\d+", p.parent.parent.name)],
    )  # by version, as the Makefile's sort -V: 9.6 before 15
    if found:
        return found[-1].parent
    raise SystemExit(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL 15+ "
        "(Debian: apt-get install postgresql-15)"
    )


class LocalCluster:
    """A data directory (home/data) with its log (home/postgresql.log), run by pg_ctl as the
    user PostgreSQL must run as. The home is `preferred` unless that user cannot reach it (a
    checkout under /root, say): then a private directory in /var/tmp named after it."""

    def __init__(self, preferred: Path, fallback_tag: str) -> None:
        self.user = pg_user()
        self.bindir = pg_bindir()
        self.home = self.choose_home(preferred, fallback_tag)
        self.data = self.home / "data"
        self.log = self.home / "postgresql.log"
        self.port = 0
        self.running = False
        self.server_options: list[str] = []  # more of postgres's options, e.g. "-c name=value"

    def as_pg(self) -> list[str]:
        return as_user(self.user)

    def choose_home(self, preferred: Path, tag: str) -> Path:
        if self.user is None:
            return preferred
        nearest = next(p for p in (preferred, *preferred.parents) if p.exists())
        if subprocess.run([*self.as_pg(), "test", "-x", str(nearest)], check=False).returncode == 0:
            return preferred
        digest = hashlib.sha256(str(preferred.parent).encode()).hexdigest()[:12]
        fallback = Path("/var/tmp") / f"financeatp-{tag}{digest}"  # noqa: S108 (private, 0700)
        # A shared directory: use it only if nobody else made that path first.
        if fallback.is_symlink() or (
            fallback.exists() and fallback.stat().st_uid not in (0, self.user.pw_uid)
        ):
            raise SystemExit(f"{fallback} exists and belongs to someone else: remove it")
        return fallback

    def run_pg(self, *command: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.as_pg(), *command], check=False, capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise SystemExit(f"{command[0]} failed:\n{result.stdout}{result.stderr}")
        return result

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    def give_to_pg(self, path: Path) -> None:
        if self.user is None:
            return
        for entry in [path, *path.rglob("*")]:
            os.chown(entry, self.user.pw_uid, self.user.pw_gid)

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def initdb(self, *options: str) -> None:
        """A UTF-8 cluster with data checksums; `options` choose authentication."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.give_to_pg(self.home)
        self.run_pg(
            self.tool("initdb"), "-D", str(self.data), "-U", "postgres", "--data-checksums",
            "-E", "UTF8", "--no-locale", "--lc-messages=C", *options, check=True,
        )  # fmt: skip

    def configure(self, title: str, settings: Mapping[str, str]) -> None:
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# {title}\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def running_port(self) -> int | None:
        """The port of a postmaster already running on this data directory, if any."""
        if self.run_pg(self.tool("pg_ctl"), "status", "-D", str(self.data)).returncode != 0:
            return None
        return int((self.data / "postmaster.pid").read_text().splitlines()[3])

    def start(self, port: int | None = None) -> None:
        self.port = port or free_port()
        result = self.run_pg(
            self.tool("pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", "120", "-o", " ".join([f"-p {self.port}", *self.server_options]),
        )  # fmt: skip
        if result.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise SystemExit(f"PostgreSQL did not start:\n{result.stdout}{result.stderr}{tail}")
        self.running = True

    def stop(self, mode: str = "fast") -> bool:
        """pg_ctl stop (an immediate stop when a fast one fails); True if it stopped cleanly."""
        if not self.running:
            return True
        pg_ctl = self.tool("pg_ctl")
        result = self.run_pg(pg_ctl, "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "120")
        if result.returncode != 0:
            self.run_pg(pg_ctl, "stop", "-D", str(self.data), "-m", "immediate", "-w")
        self.running = False
        return result.returncode == 0

    def version(self) -> str:
        out = self.run_pg(self.tool("postgres"), "--version").stdout
        found = re.search(r"\) (\d+(?:\.\d+)*)", out)
        return found.group(1) if found else "?"
