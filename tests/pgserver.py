"""A throwaway PostgreSQL server on 127.0.0.1 for tests (Debian package ``postgresql``).

``postgres_server(["db1", "db2"])`` starts a cluster in a temporary folder (as the
``postgres`` user when the tests run as root, since initdb refuses root), creates the
databases, yields ``"127.0.0.1:<port>"`` and stops and removes the cluster afterwards. The
calling test is skipped with a reason when the server binaries are not installed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_PG_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")


def _pg_bin(name: str) -> str | None:
    for d in _PG_DIRS:
        if Path(d, name).exists():
            return str(Path(d, name))
    return shutil.which(name)


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--", *cmd]
    pytest.skip("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@contextmanager
def postgres_server(databases: list[str], max_connections: int = 200) -> Iterator[str]:
    """Start PostgreSQL with ``databases``; yield ``host:port``; stop it afterwards."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; "
            "install the Debian package 'postgresql'"
        )
    import psycopg2

    root = Path(tempfile.mkdtemp(prefix="dictation-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        user = _as_pg_user(["x"])[2]
        shutil.chown(root, user)
        shutil.chown(data, user)
    port = free_port()
    subprocess.run(
        _as_pg_user(
            [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    opts = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
        f"-c max_connections={max_connections}"
    )
    subprocess.run(
        _as_pg_user(
            [pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in databases:
                cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_pg_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
