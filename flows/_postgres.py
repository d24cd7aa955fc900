"""A local PostgreSQL cluster for the Prefect server, in a folder, with no system service.

SQLite serialises every write: under concurrent runs the server answers "database is locked".
`start(folder)` makes (once) and starts a cluster in `folder` and returns the SQLAlchemy URL to put
in `PREFECT_SERVER_DATABASE_CONNECTION_URL`; `stop(folder)` stops it. The cluster listens on
127.0.0.1 only (trust authentication: any local process may connect, as with SQLite's file), its
unix socket inside `folder`, on a free port recorded in `folder/cluster.json` so a second `start`
returns the same URL. It persists in `folder` between starts; delete the folder to throw it away.

PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user (else `nobody`),
`folder` chowned to it. When a parent folder is closed to that user (pytest's tmp is 0700), they
run with the one capability to pass through folders (CAP_DAC_READ_SEARCH), not as root.

    python -m flows._postgres start|stop|url FOLDER
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from flows._server import _free_port
from tasks.errors import UserError

DATABASE = "prefect"
SUPERUSER = "prefect"  # the cluster's own role (initdb -U), not an OS user
STATE = "cluster.json"
START_TIMEOUT_S = 60
SOCKET_PATH_MAX = 100  # a unix socket path is at most 107 bytes; longer folders get TCP only


def _binary(name: str) -> str:
    """initdb, pg_ctl, psql: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]), reverse=True)
    if versions:
        return versions[0]
    raise UserError(f"PostgreSQL's {name} not found (PATH, /usr/lib/postgresql/*/bin): "
                    "install postgresql (apt-get install postgresql)")


def _run_as() -> tuple[list[str], int | None]:
    """The prefix that runs PostgreSQL's programs unprivileged, and that user's uid (None: as we are)."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
            break
        except KeyError:
            continue
    else:
        raise UserError("PostgreSQL refuses to run as root and there is no 'postgres' or 'nobody' user to run it as")
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"], user.pw_uid


def _prefix(folder: Path) -> list[str]:
    prefix, uid = _run_as()
    if uid is None:
        return prefix
    for path in (folder, *(p for p in folder.rglob("*") if not p.is_symlink())):
        if path.stat().st_uid != uid:
            os.chown(path, uid, pwd.getpwuid(uid).pw_gid)
    reach = subprocess.run([*prefix, "--", "test", "-w", str(folder)], capture_output=True)
    if reach.returncode != 0:  # a parent folder it cannot pass through
        prefix += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return [*prefix, "--"]


def _call(prefix: list[str], cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([*prefix, *cmd], capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split())[-500:]
        raise UserError(f"PostgreSQL: {what} failed (exit {result.returncode}): {detail}")
    return result


def _state(folder: Path) -> dict:
    try:
        return json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _running(prefix: list[str], data: Path) -> bool:
    if not (data / "postmaster.pid").exists():
        return False
    return subprocess.run([*prefix, _binary("pg_ctl"), "status", "-D", str(data)], capture_output=True).returncode == 0


def url(folder: Path) -> str | None:
    """The URL of the cluster recorded in `folder`, or None if there is none."""
    return _state(folder.resolve()).get("url")


def start(folder: Path) -> str:
    """Start (and first make) the cluster in `folder`; its URL, as SQLAlchemy and Prefect take it."""
    initdb, pg_ctl, psql = _binary("initdb"), _binary("pg_ctl"), _binary("psql")
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    prefix = _prefix(folder)
    data, state = folder / "data", _state(folder)
    if _running(prefix, data) and state.get("url"):
        return state["url"]
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)  # an initdb that stopped half-way
        _call(prefix, [initdb, "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"], "initdb")
    # The same port as last time when it is free (the same URL); PostgreSQL binds with SO_REUSEADDR.
    port = _free_port(state.get("port"), reuse_address=True)
    sockets = str(folder) if len(str(folder)) + 20 <= SOCKET_PATH_MAX else ""
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{sockets}'"
    # Its own session: a Ctrl-C or a process-group kill aimed at the caller does not reach the cluster.
    _call(prefix, [pg_ctl, "-D", str(data), "-l", str(folder / "postgres.log"), "-w", "-t", str(START_TIMEOUT_S),
                   "-o", options, "start"], f"pg_ctl start (log: {folder / 'postgres.log'})", start_new_session=True)
    exists = _call(prefix, [psql, "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", "postgres", "-Atc",
                            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"], "psql").stdout.strip()
    if not exists:
        _call(prefix, [psql, "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", "postgres", "-qc",
                       f"CREATE DATABASE {DATABASE}"], f"CREATE DATABASE {DATABASE}")
    address = f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
    record = folder / STATE
    record.write_text(json.dumps({"url": address, "port": port, "data": str(data)}) + "\n")
    return address


def stop(folder: Path) -> None:
    """Stop the cluster in `folder` (fast: open connections are closed); nothing if none runs."""
    folder = folder.resolve()
    data = folder / "data"
    if not (data / "postmaster.pid").exists():
        return
    prefix = _prefix(folder)
    if _running(prefix, data):
        _call(prefix, [_binary("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], "pg_ctl stop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows._postgres", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "url"))
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(start(args.folder))
        elif args.command == "stop":
            stop(args.folder)
        else:
            found = url(args.folder)
            if not found:
                print(f"error: no PostgreSQL cluster recorded in {args.folder}", file=sys.stderr)
                return 1
            print(found)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
