"""Load benchmark: POST /v1/orders over HTTP from a separate process, against a real `exitbox
serve` on PostgreSQL, and in the same run against a bare endpoint doing one transactional insert on
the same database (the floor of this machine).

    python bench/load.py                     # 32 clients, 20 s per target in 4 slices
    python bench/load.py --clients 8 --seconds 10 --slices 2

The two targets take turns in slices (floor, exitbox, exitbox, floor, ...), so a machine whose
speed drifts during the run (it does: the floor alone moves by a third from one second to the
next) weighs on both alike; each slice's figures are printed, then the totals. Everything runs
on this machine, on loopback; request loops are bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the bare endpoint


async def bare_server(port: int, dsn: str) -> None:
    import asyncpg
    from aiohttp import web

    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=20)
    async with pool.acquire() as conn:
        await conn.execute(
            "create table if not exists bench_floor (id bigint generated always as identity primary key, "
            "body jsonb not null, at timestamptz not null default now())"
        )

    async def handle(request: web.Request) -> web.Response:
        body = await request.text()
        async with pool.acquire() as conn, conn.transaction():
            oid = await conn.fetchval("insert into bench_floor (body) values ($1::jsonb) returning id", body)
        return web.json_response({"id": oid}, status=201)

    app = web.Application()
    app.router.add_post("/bare", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


# --------------------------------------------------------------------------- the load driver


async def drive(url: str, token: str, clients: int, seconds: float, bodies: list[dict], cap: int) -> dict:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    sent = 0

    async def worker(i: int) -> None:
        nonlocal sent
        rng = random.Random(i)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and sent < cap:
                sent += 1
                body = rng.choice(bodies)
                t0 = time.perf_counter()
                try:
                    async with session.post(url, json=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except aiohttp.ClientError:
                    status = 0
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[status] = statuses.get(status, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return {"wall": time.perf_counter() - t0, "latencies": latencies, "statuses": statuses}


def summary(slices: list[dict]) -> dict:
    """Throughput, latency percentiles and statuses of one or more slices of a target."""
    wall = sum(s["wall"] for s in slices)
    lat = sorted(x for s in slices for x in s["latencies"])
    statuses: dict[str, int] = {}
    for s in slices:
        for k, n in s["statuses"].items():
            statuses[str(k)] = statuses.get(str(k), 0) + n
    return {
        "requests": len(lat),
        "per_second": len(lat) / wall if wall else 0.0,
        "p50_ms": statistics.median(lat) if lat else None,
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "statuses": dict(sorted(statuses.items())),
    }


# --------------------------------------------------------------------------- orchestration


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return  # it answers
            time.sleep(0.3)
        except Exception:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0, help="per target, over all its slices")
    ap.add_argument("--slices", type=int, default=4, help="turns each target takes, alternating")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds per target first, not counted")
    ap.add_argument("--cap", type=int, default=200_000, help="at most this many requests per target")
    ap.add_argument("--keep", action="store_true", help="keep the run's database and server log")
    ap.add_argument("--bare-server", nargs=2, metavar=("PORT", "DSN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_server:
        asyncio.run(bare_server(int(args.bare_server[0]), args.bare_server[1]))
        return

    # a run stopped with SIGTERM stops its servers and load driver too (``finally`` below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from db.embedded import EmbeddedPostgres, ensure_database
    from service.auth import mint_token
    from solver.generate import generate

    work = Path(tempfile.mkdtemp(prefix="exitbox-load-"))
    os.chmod(work, 0o755)
    pg = EmbeddedPostgres(work / "pg")
    procs: list[subprocess.Popen] = []
    try:
        admin = pg.start()
        dsn = asyncio.run(ensure_database(admin, "load"))
        # a roomy city: the benchmark measures the service, not a full kitchen
        tz = "Asia/Shanghai"
        net, _ = generate(orders=20_000, stations=20, kitchens=5, seed=11, tightness=0.2, timezone=tz)
        import yaml

        (work / "network.yaml").write_text(yaml.safe_dump(net, sort_keys=False))
        secret = secrets.token_urlsafe(32)
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "EXITBOX_SECRET": secret,
            "EXITBOX_HOME": str(work / "home"),
            "EXITBOX_ORDERS_PER_MINUTE": "100000",
            "EXITBOX_LOG_LEVEL": "WARNING",
            "EXITBOX_POOL_MAX": "20",
            # the background planner runs at its default interval, as in service
        }
        port = free_port()
        exitbox = Path(sys.executable).parent / "exitbox"
        log = (work / "serve.log").open("w")
        serve = subprocess.Popen(
            [str(exitbox), "serve", "--port", str(port), "--network", str(work / "network.yaml")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(serve)
        bare_port = free_port()
        bare = subprocess.Popen(
            [sys.executable, __file__, "--bare-server", str(bare_port), dsn],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(bare)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
        except RuntimeError:
            print((work / "serve.log").read_text()[-3000:])
            raise
        wait_http(f"http://127.0.0.1:{bare_port}/bare")
        day = (datetime.now(ZoneInfo(tz)) + timedelta(days=1)).date()
        rng = random.Random(5)
        bodies = []
        for _ in range(2000):
            k = rng.choice(net["kitchens"])
            st = rng.choice(sorted(k["stations"]))
            eta = datetime(day.year, day.month, day.day, 7, 0, tzinfo=ZoneInfo(tz)) + timedelta(
                minutes=rng.randint(0, 180)
            )
            items = rng.sample(k["menu"], min(2, len(k["menu"])))
            bodies.append(
                {
                    "station_id": st,
                    "kitchen_id": k["id"],
                    "eta": eta.isoformat(),
                    "items": [{"sku": m["sku"], "qty": 1} for m in items],
                }
            )
        token = mint_token(secret, "commuter", "load")
        slices = max(1, args.slices)
        print(
            f"== load: {args.clients} clients, {args.seconds:.0f} s per target in {slices} slices "
            f"taking turns after {args.warmup:.0f} s of warm-up each, loopback ==",
            flush=True,
        )
        floor_name, ours_name = "floor (one insert)", "exitbox POST /v1/orders"
        targets = {
            floor_name: f"http://127.0.0.1:{bare_port}/bare",
            ours_name: f"http://127.0.0.1:{port}/v1/orders",
        }

        def drive_apart(url: str, seconds: float, cap: int) -> dict:
            r = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import asyncio, json, sys; sys.path.insert(0, {str(ROOT)!r}); "
                    "from bench.load import drive; "
                    "print(json.dumps(asyncio.run(drive(*json.loads(sys.stdin.read())))))",
                ],
                input=json.dumps([url, token, args.clients, seconds, bodies, cap]),
                capture_output=True,
                text=True,
                check=True,
            )
            return dict(json.loads(r.stdout.strip().splitlines()[-1]))

        for url in targets.values():  # warm-up, not counted: connections, caches, first plans
            drive_apart(url, args.warmup, args.cap)
        done: dict[str, list[dict]] = {name: [] for name in targets}
        server = {floor_name: bare.pid, ours_name: serve.pid}
        cpu = dict.fromkeys(targets, 0.0)  # the server process's CPU seconds while it was driven
        for i in range(slices):
            names = list(targets) if i % 2 == 0 else list(reversed(targets))  # ABBA: neither always first
            for name in names:
                before = cpu_seconds(server[name])
                done[name].append(drive_apart(targets[name], args.seconds / slices, args.cap // slices))
                cpu[name] += cpu_seconds(server[name]) - before
            f, o = summary(done[floor_name][-1:]), summary(done[ours_name][-1:])
            print(
                f"{f'slice {i + 1}':>26}: floor {f['per_second']:7.1f} req/s p99 {f['p99_ms']:5.1f} ms, "
                f"exitbox {o['per_second']:7.1f} req/s p99 {o['p99_ms']:5.1f} ms "
                f"({o['per_second'] / f['per_second']:.0%})",
                flush=True,
            )
        results = {name: summary(got) for name, got in done.items()}
        for name, res in results.items():
            print(
                f"{name:>26}: {res['per_second']:8.1f} req/s  p50 {res['p50_ms']:7.1f} ms  "
                f"p99 {res['p99_ms']:7.1f} ms  server CPU {1000 * cpu[name] / max(1, res['requests']):.3f} "
                f"ms/request  statuses {res['statuses']}",
                flush=True,
            )
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            shown = [
                line.removeprefix("exitbox_")
                for line in r.read().decode().splitlines()
                if line.startswith(("exitbox_placement_", "exitbox_plan_cache_", "exitbox_planner_runs"))
            ]
        print(f"{'exitbox batching, planner':>26}: " + ", ".join(shown), flush=True)
        floor, ours = results[floor_name], results[ours_name]
        fivexx = sum(n for s, n in ours["statuses"].items() if str(s).startswith("5") or str(s) == "0")
        over = asyncio.run(_over_reserved(dsn))
        print(
            f"{'exitbox / floor':>26}: throughput {ours['per_second'] / floor['per_second']:.0%}, "
            f"p99 {ours['p99_ms'] / floor['p99_ms']:.1f}x, 5xx {fivexx}, over-reserved slots {over}"
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        pg.stop()
        if args.keep or sys.exc_info()[0] is not None:
            print(f"the run's database and server log are kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)  # ~150 MB of database per run


async def _over_reserved(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                """select count(*) from parcels p join parcels q on p.slot_id = q.slot_id and p.id < q.id
                and p.during && q.during where p.state <> 'released' and q.state <> 'released'"""
            )
        )
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
