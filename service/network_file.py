"""Reading a network file (YAML or JSON) with errors that name file, field path and reason."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from solver.model import NetworkSpec


class NetworkFileError(ValueError):
    pass


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _named(loc: tuple[Any, ...], data: Any) -> str:
    """The path, with list positions followed by the id found there: stations[2](s03).cabinets."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            if isinstance(node, list) and 0 <= part < len(node):
                node = node[part]
                if isinstance(node, dict) and isinstance(node.get("id") or node.get("sku"), str):
                    out += f"({node.get('id') or node.get('sku')})"
            else:
                node = None
        else:
            out += ("." if out else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def parse_network(text: str, name: str) -> NetworkSpec:
    try:
        data = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        elif isinstance(exc, json.JSONDecodeError):
            where = f" at line {exc.lineno}, column {exc.colno}"
        raise NetworkFileError(
            f"{name}: not valid {'JSON' if name.endswith('.json') else 'YAML'}{where}"
        ) from None
    if not isinstance(data, dict):
        raise NetworkFileError(
            f"{name}: the top level must be a mapping with city, timezone, stations and kitchens"
        )
    try:
        return NetworkSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for e in exc.errors(include_url=False, include_input=False):
            loc = tuple(e.get("loc", ()))
            msg = e.get("msg", "invalid").removeprefix("Value error, ")
            lines.append(f"{name}: {_named(loc, data)}: {msg}")
        raise NetworkFileError("; ".join(lines)) from None


def read_network(path: str | Path) -> NetworkSpec:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise NetworkFileError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return parse_network(text, str(p))


def demo_network() -> NetworkSpec:
    text = (resources.files("service") / "data" / "demo-city.yaml").read_text("utf-8")
    return parse_network(text, "demo-city.yaml")
