"""flows/_postgres.py: a throwaway cluster in tmp_path (started as an unprivileged user when the
suite runs as root), its URL stable across starts, its data kept across a stop, and one line
naming the package when PostgreSQL is not installed."""

from __future__ import annotations

import asyncio

import pytest

from flows import _postgres
from tasks.errors import UserError

try:
    _postgres._binary("initdb")
    HAVE_POSTGRES = True
except UserError:
    HAVE_POSTGRES = False
needs_postgres = pytest.mark.skipif(not HAVE_POSTGRES, reason="PostgreSQL is not installed (apt-get install postgresql)")


def _query(address: str, sql: str):
    import asyncpg

    async def run():
        dsn = address.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            return await connection.fetchval(sql) if sql.startswith("SELECT") else await connection.execute(sql)
        finally:
            await connection.close()

    return asyncio.run(run())


@pytest.fixture
def cluster(tmp_path):
    folder = tmp_path / "postgres"
    yield folder
    _postgres.stop(folder)


@needs_postgres
def test_start_makes_a_cluster_with_the_prefect_database_and_is_idempotent(cluster):
    address = _postgres.start(cluster)
    assert address.startswith("postgresql+asyncpg://prefect@127.0.0.1:") and address.endswith("/prefect")
    assert _query(address, "SELECT current_database()") == "prefect"
    assert _postgres.start(cluster) == address  # already running: the recorded URL
    assert _postgres.url(cluster) == address


@needs_postgres
def test_data_and_url_survive_a_stop_and_a_start(cluster):
    address = _postgres.start(cluster)
    _query(address, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
    _postgres.stop(cluster)
    with pytest.raises(OSError):
        _query(address, "SELECT 1")
    _postgres.stop(cluster)  # stopping a stopped cluster is nothing
    assert _postgres.start(cluster) == address  # the port was free again: the same URL
    assert _query(address, "SELECT x FROM kept") == 7


@needs_postgres
def test_the_cli_starts_prints_and_stops(cluster, capsys):
    assert _postgres.main(["url", str(cluster)]) == 1
    assert "no PostgreSQL cluster" in capsys.readouterr().err
    assert _postgres.main(["start", str(cluster)]) == 0
    address = capsys.readouterr().out.strip()
    assert _postgres.main(["url", str(cluster)]) == 0 and capsys.readouterr().out.strip() == address
    assert _postgres.main(["stop", str(cluster)]) == 0
    assert not (cluster / "data" / "postmaster.pid").exists()


def test_without_postgresql_one_line_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(_postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(_postgres.glob, "glob", lambda pattern: [])
    with pytest.raises(UserError, match=r"install postgresql \(apt-get install postgresql\)"):
        _postgres.start(tmp_path / "postgres")
    assert _postgres.main(["start", str(tmp_path / "postgres")]) == 1
