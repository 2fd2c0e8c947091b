"""HTTP handlers, thin, per audience. Importing the modules registers their endpoints on ``api``."""

from __future__ import annotations

from ..http import Api

api = Api()


def load_all() -> Api:
    from . import cabinet, commuter, kitchen, live, operator, ops, public  # noqa: F401

    return api
