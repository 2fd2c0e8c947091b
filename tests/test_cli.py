"""The console script: clear one-line errors, network load in place, tokens, and `serve --demo`
from a fresh home to Ctrl-C with no PostgreSQL left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import yaml

from service.auth import verify_token

from .conftest import EXAMPLES, SECRET

_BESIDE = Path(sys.executable).parent / "exitbox"
EXITBOX = str(_BESIDE) if _BESIDE.exists() else shutil.which("exitbox")


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    assert EXITBOX, "the exitbox console script is not installed"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [EXITBOX, *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )


def test_network_check_ok_and_errors_name_file_field_and_reason(tmp_path: Path) -> None:
    ok = run("network", "check", str(EXAMPLES / "tiny-network.yaml"))
    assert ok.returncode == 0 and "Tiny Town" in ok.stdout
    doc = yaml.safe_load((EXAMPLES / "tiny-network.yaml").read_text())
    doc["kitchens"][0]["menu"][1]["steps"][0]["resource"] = "fryer"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    r = run("network", "check", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(bad) in lines[0] and "kitchens[0](bakery)" in lines[0]
    assert "menu[1].steps[0].resource 'fryer'" in lines[0]
    (tmp_path / "broken.yaml").write_text("city: [unclosed\n")
    r = run("network", "check", str(tmp_path / "broken.yaml"))
    assert r.returncode == 2 and "not valid YAML at line" in r.stderr
    r = run("network", "check", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    as_json = tmp_path / "net.json"
    as_json.write_text(json.dumps(doc | {"timezone": "Nowhere/Land"}))
    r = run("network", "check", str(as_json))
    assert r.returncode == 2 and "timezone: unknown IANA time zone 'Nowhere/Land'" in r.stderr


def test_bad_setting_is_one_clear_line() -> None:
    r = run("migrate", env={"EXITBOX_PORT": "not-a-port", "DATABASE_URL": "postgresql://x@127.0.0.1:1/x"})
    assert r.returncode == 2
    assert r.stderr.strip().startswith("exitbox: error: setting EXITBOX_PORT")
    r = run("migrate", env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert r.returncode == 2 and "cannot reach the database" in r.stderr and "Traceback" not in r.stderr


def test_token_prints_a_verifiable_token_on_its_last_line(tmp_path: Path) -> None:
    r = run("token", "--role", "kitchen", "--subject", "bakery", env={"EXITBOX_SECRET": SECRET})
    assert r.returncode == 0
    p = verify_token(SECRET, r.stdout.strip().splitlines()[-1])
    assert (p.role, p.subject, p.scope) == ("kitchen", "bakery", "bakery")
    # without EXITBOX_SECRET a secret is generated once into the home and reused
    env = {"EXITBOX_HOME": str(tmp_path), "EXITBOX_SECRET": ""}
    env_no_secret = {k: v for k, v in env.items() if v}
    os.environ.pop("EXITBOX_SECRET", None)
    a = run("token", "--role", "commuter", "--subject", "ann", env=env_no_secret)
    b = run("token", "--role", "operator", "--subject", "op", "--scope", "north", env=env_no_secret)
    secret = (tmp_path / "secret").read_text().strip()
    assert verify_token(secret, a.stdout.strip().splitlines()[-1]).scope == "ann"
    assert verify_token(secret, b.stdout.strip().splitlines()[-1]).scope == "north"
    r = run("token", "--role", "emperor", "--subject", "x")
    assert r.returncode == 2


async def test_network_load_updates_in_place_and_refuses_to_strand_live_orders(
    db_url: str, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": db_url, "EXITBOX_SECRET": SECRET}
    r = run("network", "load", str(EXAMPLES / "tiny-network.yaml"), env=env)
    assert r.returncode == 0, r.stderr
    assert "slots_added 10" in r.stdout
    conn = await asyncpg.connect(db_url)
    try:
        ids = {(x["cabinet_id"], x["label"]): x["id"] for x in await conn.fetch("select * from slots")}
        doc = yaml.safe_load((EXAMPLES / "tiny-network.yaml").read_text())
        doc["stations"][0]["name"] = "North Gate (renamed)"
        doc["stations"][0]["cabinets"][0]["slots"][0]["count"] = 4  # one more hot M slot
        changed = tmp_path / "changed.yaml"
        changed.write_text(yaml.safe_dump(doc))
        r = run("network", "load", str(changed), env=env)
        assert r.returncode == 0, r.stderr
        after = {(x["cabinet_id"], x["label"]): x["id"] for x in await conn.fetch("select * from slots")}
        assert all(after[k] == v for k, v in ids.items())  # ids are stable
        assert len(after) == len(ids) + 1
        assert await conn.fetchval("select name from stations where id = 'north'") == "North Gate (renamed)"
        # put a live parcel in the slot that a further change would remove
        slot = after[("north-a", "C02")]
        await conn.execute(
            """insert into orders (id, commuter_id, station_id, cabinet_id, kitchen_id, eta, items,
                                   total_cents, status, code_hash, code_sealed)
               values ('o1', 'x', 'north', 'north-a', 'bakery', now(), '[]', 0, 'confirmed', 'h', 'v1:0')"""
        )
        await conn.execute(
            """insert into parcels (order_id, zone, size, slot_id, during, expires_at)
               values ('o1', 'chilled', 'M', $1, tstzrange(now(), now() + interval '1 hour'), now())""",
            slot,
        )
        doc["stations"][0]["cabinets"][0]["slots"][2]["count"] = 1  # chilled: 2 -> 1 drops C02
        fewer = tmp_path / "fewer.yaml"
        fewer.write_text(yaml.safe_dump(doc))
        r = run("network", "load", str(fewer), env=env)
        assert r.returncode == 2
        assert "north-a/C02" in r.stderr and "live order" in r.stderr
        assert await conn.fetchval("select count(*) from slots where not retired") == len(after)
    finally:
        await conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _postgres_of(home: Path) -> list[int]:
    """Live postgres processes of this home: the postmaster named in postmaster.pid, and any
    process whose command line names the home."""
    pids = set()
    pidfile = home / "pgdata" / "postmaster.pid"
    if pidfile.exists():
        first = pidfile.read_text().split("\n", 1)[0].strip()
        if first.isdigit():
            pids.add(int(first))
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "postgres" in cmd and str(home) in cmd:
                pids.add(int(proc.name))
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return sorted(alive)


def test_serve_demo_answers_places_an_order_and_leaves_no_postgres(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = _free_port()
    env = {**os.environ, "EXITBOX_HOME": str(home)}
    env.pop("DATABASE_URL", None)
    env.pop("EXITBOX_SECRET", None)
    assert EXITBOX
    proc = subprocess.Popen(
        [EXITBOX, "serve", "--demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = _get(base + "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no /healthz within 30 s"
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.3)
        status, stations = _get(base + "/v1/stations")
        assert status == 200 and len(stations) >= 12
        token = run("token", "--role", "commuter", "--subject", "rider", env={"EXITBOX_HOME": str(home)})
        token_value = token.stdout.strip().splitlines()[-1]
        tz = ZoneInfo("Asia/Shanghai")
        eta = (datetime.now(tz) + timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)
        status, placed = _get(
            base + "/v1/orders",
            token_value,
            {
                "station_id": "s03",
                "kitchen_id": "k-dawn",
                "eta": eta.isoformat(),
                "items": [{"sku": "bun-pork", "qty": 1}],
            },
        )
        assert status == 201, placed
        assert len(placed["pickup_code"]) == 6 and placed["pickup_code"].isdigit()
        assert _postgres_of(home), "the embedded PostgreSQL should be running under the home"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = proc.stdout.read() if proc.stdout else ""
    # a serve killed by the signal (rc -2) never stops its PostgreSQL: Ctrl-C must shut it down
    assert proc.returncode == 0, f"serve ended with {proc.returncode} on Ctrl-C; it said:\n{output[-3000:]}"
    deadline = time.monotonic() + 10
    while _postgres_of(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _postgres_of(home) == [], (
        f"PostgreSQL was left running after Ctrl-C; serve said:\n{output[-3000:]}"
    )
