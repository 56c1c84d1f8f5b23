"""The explorer page at `/`: a static page (api/explorer_assets) that charts /data in the
browser with the vendored uPlot. No data and no key in what is served here: the page asks
/catalog, /data and /plan itself with the key the user enters, so these routes need none.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, Router, get
from litestar.handlers import HTTPRouteHandler
from litestar.response import File
from litestar.static_files import create_static_files_router

ASSETS = Path(__file__).with_name("explorer_assets")
ASSETS_PATH = "/explorer"

# Everything the page loads comes from this server: scripts and styles from files (no inline
# code), requests to the API only. uPlot sizes its elements through the CSSOM, which
# style-src does not govern. Blob URLs are the downloads the page hands to the browser.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
UNAUTHENTICATED_PATHS = ("^/$", f"^{ASSETS_PATH}/")


def _secured(response: Response[object]) -> Response[object]:
    response.headers.update(SECURITY_HEADERS)
    return response


@get("/", exclude_from_auth=True, include_in_schema=False, sync_to_thread=False)
def page() -> File:
    return File(
        ASSETS / "index.html",
        media_type="text/html; charset=utf-8",
        content_disposition_type="inline",
        headers=SECURITY_HEADERS,
    )


def routes() -> list[HTTPRouteHandler | Router]:
    assets: Router = create_static_files_router(
        ASSETS_PATH,
        directories=[ASSETS],
        include_in_schema=False,
        opt={"exclude_from_auth": True},
        after_request=_secured,
    )
    return [page, assets]
