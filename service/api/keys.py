from __future__ import annotations

from aiohttp import web

from ..ordering import Ctx

CTX: web.AppKey[Ctx] = web.AppKey("ctx", Ctx)


def ctx_of(app: web.Application) -> Ctx:
    return app[CTX]
