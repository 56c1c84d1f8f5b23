"""The explorer page's routes: served without a key, under a strict CSP, from local files only."""

from __future__ import annotations

import re

from litestar.testing import TestClient

from api.explorer import ASSETS, CONTENT_SECURITY_POLICY


def test_page_and_assets_need_no_key_and_carry_security_headers(client: TestClient) -> None:
    anonymous = {"Authorization": ""}
    page = client.get("/", headers=anonymous)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>stratum explorer</title>" in page.text
    for path in ("/explorer/explorer.js", "/explorer/vendor/uplot/uPlot.iife.min.js"):
        asset = client.get(path, headers=anonymous)
        assert asset.status_code == 200, path
        assert asset.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["X-Frame-Options"] == "DENY"
    assert (
        "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    )
    # The data still needs one.
    assert client.get("/catalog", headers=anonymous).status_code == 401
    assert client.get("/explorer/../api/app.py", headers=anonymous).status_code == 404


def test_page_loads_nothing_from_elsewhere() -> None:
    """Works offline: every script, style and request is a path on this server."""
    for name in ("index.html", "explorer.js", "explorer.css"):
        text = (ASSETS / name).read_text()
        assert not re.search(r"https?://|//cdn|src=\"//", text), name
    assert (ASSETS / "vendor" / "uplot" / "LICENSE").read_text().startswith("The MIT License")
    html = (ASSETS / "index.html").read_text()
    for path in re.findall(r'(?:src|href)="(/explorer/[^"]+)"', html):
        assert (ASSETS / path.removeprefix("/explorer/")).is_file(), path
