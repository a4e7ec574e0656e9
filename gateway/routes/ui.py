"""The memory inspector: a static page at ``/ui`` (``gateway/ui/``: index.html, app.js,
style.css, shipped as package data). It holds no data and needs no key itself; the page calls
the public memory API from the browser with the key the user types in."""

from __future__ import annotations

from importlib import resources

from litestar import Response, Router, get

from gateway.errors import NotFound

ASSETS = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}

# Only the page's own files, no inline script or style, no other origin.
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def asset(name: str) -> Response[bytes]:
    if name not in ASSETS:
        raise NotFound(f"no file {name!r} in the memory inspector", param="path")
    content = resources.files("gateway").joinpath("ui", name).read_bytes()
    return Response(content, media_type=ASSETS[name], headers=HEADERS)


@get(["/", "/index.html"], include_in_schema=False, sync_to_thread=False)
def ui_page() -> Response[bytes]:
    return asset("index.html")


@get("/{name:str}", include_in_schema=False, sync_to_thread=False)
def ui_asset(name: str) -> Response[bytes]:
    return asset(name)


ui = Router(path="/ui", route_handlers=[ui_page, ui_asset])

# Swagger UI's own files (gateway/ui/docs/), for /docs without a CDN.
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
}


@get("/docs/assets/{name:str}", include_in_schema=False, sync_to_thread=False)
def docs_asset(name: str) -> Response[bytes]:
    if name not in DOCS_ASSETS:
        raise NotFound(f"no file {name!r} in the API docs' assets", param="path")
    content = resources.files("gateway").joinpath("ui", "docs", name).read_bytes()
    return Response(
        content, media_type=DOCS_ASSETS[name], headers={"cache-control": "public, max-age=86400"}
    )
