"""Services the tests and benchmarks start themselves: a throwaway PostgreSQL server on
127.0.0.1."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_bin() -> Path | None:
    """Debian's server binaries (postgresql-15 and alike), or initdb on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = candidates[0] if candidates else shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """initdb + pg_ctl in a temporary folder, listening on 127.0.0.1 only, trust auth.

    PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user that
    Debian's package creates.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self, max_connections: int = 100) -> str:
        if self.user:
            shutil.chown(self.root, self.user)
        self._run("initdb", "-D", str(self.data), "-U", "tuner", "--auth=trust", "-E", "UTF8")
        self.options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            f"-c max_connections={max_connections}"
        )
        self._pg_ctl("start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tuner", "tuner")
        return f"postgresql+psycopg://tuner@127.0.0.1:{self.port}/tuner"

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (fast: open transactions are rolled back and every client is cut
        off), stay down `down_s` seconds, start it again on the same port."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        time.sleep(down_s)
        self._pg_ctl("start")

    def connections(self, url: str) -> int:
        """Client connections to the server now, this query's own left out."""
        import psycopg

        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid()"
            ).fetchone()
        return int(row[0])

    def _pg_ctl(self, action: str) -> None:
        options = self.options
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "-l",
            str(self.root / "server.log"),
            action,
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)
