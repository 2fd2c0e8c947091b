"""The pages: commuter order flow, kitchen prep board, station monitor, and the index."""

from __future__ import annotations

import html
from importlib import resources

from aiohttp import web

STATIC = resources.files("service.web") / "static"
DEMO_LINKS: web.AppKey[list[tuple[str, str, str]]] = web.AppKey("demo_links", list)
TYPES = {".css": "text/css", ".js": "text/javascript", ".html": "text/html", ".svg": "image/svg+xml"}


async def _page(request: web.Request, name: str) -> web.Response:
    """A page, told the network's time zone so that clocks read as they do at the station."""
    from ..api.keys import CTX

    tz = "UTC"
    try:
        ctx = request.app[CTX]
        async with ctx.pool.acquire() as conn:
            spec, _ = await ctx.worlds.get(conn)
        tz = spec.timezone
    except Exception:  # no network yet: the page still works, in UTC
        pass
    text = (STATIC / name).read_text("utf-8").replace("{{TZ}}", html.escape(tz))
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def order_page(request: web.Request) -> web.Response:
    return await _page(request, "order.html")


async def kitchen_page(request: web.Request) -> web.Response:
    return await _page(request, "kitchen.html")


async def station_page(request: web.Request) -> web.Response:
    return await _page(request, "station.html")


FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
    'fill="#1b2330"/><rect x="3" y="3" width="10" height="10" rx="1.5" fill="#e8590c"/></svg>'
)


async def favicon(request: web.Request) -> web.Response:
    return web.Response(
        text=FAVICON, content_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
    )


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if "/" in name or name.startswith(".") or not any(name.endswith(ext) for ext in TYPES):
        raise web.HTTPNotFound()
    path = STATIC / name
    if not path.is_file():
        raise web.HTTPNotFound()
    ext = name[name.rfind(".") :]
    return web.Response(
        body=path.read_bytes(), content_type=TYPES[ext], headers={"Cache-Control": "no-cache"}
    )


async def index(request: web.Request) -> web.Response:
    links = request.app.get(DEMO_LINKS) or []
    if links:
        items = "\n".join(
            f'<li><a href="{html.escape(href)}">{html.escape(title)}</a> '
            f"<span>{html.escape(note)}</span></li>"
            for title, href, note in links
        )
        intro = "<p>The demo city is running on a virtual clock. Every link below is already signed in.</p>"
    else:
        items = "\n".join(
            f'<li><a href="{href}">{title}</a> '
            "<span>sign in with a token from <code>exitbox token</code></span></li>"
            for title, href in (
                ("Order breakfast", "/app/order"),
                ("Kitchen prep board", "/app/kitchen/KITCHEN_ID"),
                ("Station monitor", "/app/station/STATION_ID"),
            )
        )
        intro = "<p>Pages sign in with a bearer token.</p>"
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>exitbox</title>
<link rel="stylesheet" href="/static/app.css"></head>
<body class="index"><main><h1>exitbox</h1>
<p class="sub">Breakfast, ready at your exit.</p>{intro}
<ul class="links">{items}</ul>
<p><a href="/docs">API documentation</a> · <a href="/openapi.json">openapi.json</a></p>
</main></body></html>"""
    return web.Response(text=body, content_type="text/html")


def register(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/app/order", order_page)
    app.router.add_get("/app/kitchen/{kitchen_id}", kitchen_page)
    app.router.add_get("/app/station/{station_id}", station_page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/favicon.ico", favicon)
