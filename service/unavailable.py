"""Telling a database outage apart from a bug, so that clients get 503 and Retry-After."""

from __future__ import annotations

import asyncpg

_DOWN = (
    ConnectionError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InterfaceError,
)


def is_database_error(exc: BaseException) -> bool:
    # a missing Unix socket (FileNotFoundError) is a server that is down, too
    return isinstance(exc, (*_DOWN, OSError))
