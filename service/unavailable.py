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
    if isinstance(exc, _DOWN):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError)
