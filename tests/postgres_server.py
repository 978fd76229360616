"""A PostgreSQL cluster of the tests' own: `initdb` into a temp dir, `pg_ctl` on a free port, trust auth.

Used when no server is given (`FACTORY_TEST_PG_URL`) and none answers on 127.0.0.1:5432, and by
tests that crash their database on purpose. PostgreSQL refuses to run as root: as root the cluster
runs as the `postgres` user (`runuser`), in a directory of its own under the system temp dir,
since pytest's own temp root is private to root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PG_USER = "postgres"
PG_PASSWORD = f"pw-{uuid.uuid4().hex}"  # trust auth ignores it; it must never show in an answer
PG_START_TIMEOUT_S = 60


class NoPostgresServer(RuntimeError):
    """PostgreSQL's server binaries, or a user to run them as, are missing: the reason to skip."""


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin dir (Debian layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresServer:
    """One cluster: `initdb` once, then `start` / `crash` as often as a test likes."""

    bin_dir: Path
    root: Path  # owned by the user the server runs as
    port: int
    run_as: list[str]  # e.g. ["runuser", "-u", "postgres", "--"] when the tests run as root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = PG_START_TIMEOUT_S) -> None:
        command = [*self.run_as, str(self.bin_dir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise AssertionError(
                f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}\n{self.server_log_tail()}"
            )

    def server_log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no server log)"

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", PG_USER, "-A", "trust", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            str(PG_START_TIMEOUT_S),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            options,
        )

    def crash(self) -> None:
        """Stop at once, without a checkpoint: to clients, the database just vanished."""
        self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.data_dir))

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()


def _server_user() -> tuple[list[str], int | None, int | None]:
    """How to run the server: as ourselves, or (as root) as the `postgres` user with its ids."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam(PG_USER)
    except KeyError:
        raise NoPostgresServer("running as root and there is no 'postgres' user to run PostgreSQL as") from None
    if shutil.which("runuser") is None:
        raise NoPostgresServer("running as root without runuser to start PostgreSQL as 'postgres'")
    return ["runuser", "-u", PG_USER, "--"], user.pw_uid, user.pw_gid


@contextmanager
def own_postgres_cluster(port: int) -> Iterator[PostgresServer]:
    """A started cluster on `port`; stopped at once and removed afterwards. Raises NoPostgresServer."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        raise NoPostgresServer("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin")
    run_as, uid, gid = _server_user()
    root = Path(tempfile.mkdtemp(prefix="factory-pg-"))
    if uid is not None and gid is not None:
        os.chown(root, uid, gid)
    server = PostgresServer(bin_dir, root, port, run_as)
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.running():
            subprocess.run(
                [*run_as, str(bin_dir / "pg_ctl"), "stop", "-m", "immediate", "-D", str(server.data_dir)],
                capture_output=True,
                timeout=PG_START_TIMEOUT_S,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)
