"""The explorer page in headless Chromium against a real `stratum serve` (see conftest.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq
from playwright.sync_api import Browser, Page, Route, expect

from tests.api.test_lake_sources import refuse_connections
from tests.browser.conftest import ARTIFACTS, Served, Tab, allow_connections, data_rows

WHOLE = {"user_id": "1", "metric": "heart_rate", "start": "2024-01-01", "end": "2024-01-04"}


def enter_key(page: Page, served: Served, key: str, fragment: str = "") -> None:
    """Open the page, then type the key into its field, as a person would."""
    page.goto(f"{served.base_url}/{fragment}")
    page.fill("#key", key)
    page.click("#key-form button[type=submit]")


def drawn(page: Page, draws: int = 1) -> dict[str, Any]:
    """Waits until the page has drawn `draws` charts; what it reports then."""
    # A selector, not wait_for_function: that evaluates a string, which the CSP forbids.
    page.wait_for_selector(f'#status[data-draws="{draws}"]', state="attached")
    result: dict[str, Any] = page.evaluate(
        "({points: window.stratumExplorer.pointsDrawn(), meta: window.stratumExplorer.lastMeta,"
        " requests: window.stratumExplorer.requests})"
    )
    return result


def fragment(**view: str) -> str:
    return "#" + "&".join(f"{k}={v}" for k, v in view.items())


def test_page_loads_and_charts_the_known_cohort(served: Served, tab: Tab) -> None:
    page = tab.page
    enter_key(page, served, served.admin_key)
    shown = drawn(page)
    # The default view: participant 1's heart rate over its whole coverage (3 days); auto
    # answers hourly there (3 days of 1-minute rows exceed two points per pixel column).
    assert shown["meta"]["resolution"] == "1h"
    expected = data_rows(served, served.admin_key, **WHOLE, resolution="1h")
    # One point per hour the cohort has data in (the generator leaves gaps: off-wrist hours).
    assert shown["points"] == [len(expected)] and 60 <= len(expected) <= 72
    expect(page.locator("#status")).to_contain_text("resolution 1h (auto)")
    expect(page.locator("#status")).to_contain_text("sources lake, warm")
    expect(page.locator("#plan-table tbody tr")).to_have_count(2)
    expect(page.locator("#plan-summary")).to_contain_text("stores lake, warm")
    # The key stays in this tab's sessionStorage, and out of every URL.
    assert served.admin_key not in page.url
    assert page.evaluate("sessionStorage.getItem('stratum.key')") == served.admin_key
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)
    assert (ARTIFACTS / "explorer.png").stat().st_size > 10_000
    assert tab.errors == []  # nothing refused by the page's Content-Security-Policy either


def test_two_participants_and_two_metrics_chart_one_series_each(served: Served, tab: Tab) -> None:
    page = tab.page
    view = fragment(
        user_id="1,2",
        metric="heart_rate,steps",
        start="2024-01-01",
        end="2024-01-04",
        resolution="1d",
    )
    enter_key(page, served, served.admin_key, view)
    shown = drawn(page)
    assert shown["meta"]["resolution"] == "1d"
    assert shown["points"] == [3, 3, 3, 3]  # 2 participants x 2 metrics x 3 days
    assert tab.errors == []


def test_zoom_asks_for_the_visible_span_at_a_finer_resolution(served: Served, tab: Tab) -> None:
    page = tab.page
    enter_key(page, served, served.admin_key, fragment(**WHOLE))
    first = drawn(page)
    assert first["meta"]["resolution"] == "1h"
    over = page.locator("#chart .u-over").bounding_box()
    assert over is not None
    y = over["y"] + over["height"] / 2
    # Drag across a twentieth of the chart: about 3.6 hours.
    page.mouse.move(over["x"] + over["width"] * 0.40, y)
    page.mouse.down()
    page.mouse.move(over["x"] + over["width"] * 0.45, y, steps=5)
    page.mouse.up()
    zoomed = drawn(page, draws=2)
    before, after = zoomed["requests"][0], zoomed["requests"][-1]
    assert before["start"] == "2024-01-01" and before["end"] == "2024-01-04"
    assert "2024-01-02T" in after["start"] and "2024-01-02T" in after["end"]
    assert zoomed["meta"]["resolution"] == "1m"
    assert 150 <= zoomed["points"][0] <= 260
    expect(page.locator("#start")).to_have_value(after["start"])
    expect(page.locator("#status")).to_contain_text("resolution 1m (auto)")
    # Zooming out again asks for twice the span, at a coarser resolution.
    page.click("#zoom-out")
    out = drawn(page, draws=3)
    assert out["meta"]["resolution"] == "1m"
    assert tab.errors == []


def test_times_without_a_zone_are_utc_as_the_api_reads_them(
    served: Served, browser: Browser
) -> None:
    """In a browser far from UTC, the chart spans the UTC hours the API answered."""
    context = browser.new_context(timezone_id="America/New_York")
    try:
        page = context.new_page()
        view = fragment(
            user_id="1",
            metric="heart_rate",
            start="2024-01-02T06:00:00",
            end="2024-01-02T12:00:00",
            resolution="1h",
        )
        enter_key(page, served, served.admin_key, view)
        drawn(page)
        first_hour = datetime(2024, 1, 2, 6, tzinfo=UTC).timestamp()
        last_hour = datetime(2024, 1, 2, 12, tzinfo=UTC).timestamp()
        assert page.evaluate("window.stratumExplorer.xRange()") == [first_hour, last_hour]
    finally:
        context.close()


def test_raw_view_comes_m4_reduced_to_the_chart_width(served: Served, tab: Tab) -> None:
    page = tab.page
    page.set_viewport_size({"width": 640, "height": 700})  # fewer pixel columns than rows
    enter_key(page, served, served.admin_key, fragment(**WHOLE, resolution="raw"))
    shown = drawn(page)
    request = shown["requests"][-1]
    assert request["downsample"] == "m4" and shown["meta"]["downsample"] == "m4"
    width = int(request["width"])
    raw = data_rows(served, served.admin_key, **WHOLE, resolution="raw")
    assert len(raw) > 3 * 1000
    assert width <= shown["points"][0] <= 4 * width < len(raw)
    expect(page.locator("#status")).to_contain_text(f"M4 over {width} pixel columns")


def test_errors_are_shown_in_words(served: Served, tab: Tab) -> None:
    page = tab.page
    enter_key(page, served, "")  # no key: "Use key" with the field empty
    expect(page.locator("#error")).to_contain_text("No valid key")
    enter_key(page, served, "not-a-key")
    expect(page.locator("#error")).to_contain_text("No valid key")
    # A participant outside the key's cohort: 403, in words.
    other = fragment(user_id="2", metric="heart_rate", start="2024-01-01", end="2024-01-02")
    enter_key(page, served, served.scoped_key, other)
    expect(page.locator("#error")).to_contain_text("This key may not read that")
    # The catalog lists the key's one participant (and has filled the form from the link).
    expect(page.locator("#users option")).to_have_count(1)
    # A span that ends before it starts: 400, naming the parameter.
    page.fill("#start", "2024-01-03")
    page.fill("#end", "2024-01-02")
    page.select_option("#users", "1")
    page.click("#show")
    expect(page.locator("#error")).to_contain_text("parameter end")
    expect(page.locator("#error")).to_contain_text("must be after start")


def test_a_503_is_retried_after_its_retry_after(served: Served, tab: Tab) -> None:
    page = tab.page
    refused: list[str] = []

    def once_busy(route: Route) -> None:
        # The first /data answer is the server's 503 shape; later ones reach the server.
        if not refused:
            refused.append(route.request.url)
            body = {
                "error": {
                    "code": "budget_exhausted",
                    "message": "the memory budget is in use by other queries",
                    "parameter": None,
                }
            }
            route.fulfill(
                status=503,
                headers={"Retry-After": "1"},
                content_type="application/json",
                body=json.dumps(body),
            )
        else:
            route.continue_()

    page.route("**/data?**", once_busy)
    enter_key(page, served, served.admin_key, fragment(**WHOLE))
    expect(page.locator("#error")).to_contain_text("Retrying in 1 s")
    expect(page.locator("#error")).to_contain_text("memory budget is in use")
    shown = drawn(page)
    hourly = data_rows(served, served.admin_key, **WHOLE, resolution="1h")
    assert shown["points"] == [len(hourly)] and len(refused) == 1
    expect(page.locator("#error")).to_be_hidden()


def test_downloads_of_the_current_view(served: Served, tab: Tab, tmp_path: Any) -> None:
    page = tab.page
    enter_key(page, served, served.admin_key, fragment(**WHOLE, resolution="1h"))
    drawn(page)
    hourly = len(data_rows(served, served.admin_key, **WHOLE, resolution="1h"))
    with page.expect_download() as csv_download:
        page.click(".downloads button[data-format=csv]")
    csv_path = tmp_path / "view.csv"
    csv_download.value.save_as(csv_path)
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith('"user_id","metric","ts"') and len(lines) == hourly + 1
    with page.expect_download() as parquet_download:
        page.click(".downloads button[data-format=parquet]")
    parquet_path = tmp_path / "view.parquet"
    parquet_download.value.save_as(parquet_path)
    assert pq.read_table(parquet_path).num_rows == hourly
    with page.expect_download() as arrow_download:
        page.click(".downloads button[data-format=arrow]")
    assert arrow_download.value.suggested_filename.endswith(".arrow")


def test_the_servers_own_503_is_shown_and_retried(served: Served, tab: Tab) -> None:
    """The warm store goes away: /data answers 503 warm_store_unavailable with Retry-After;
    the page says so, waits that long, asks again, and draws once the store is back."""
    page = tab.page
    warm_day = fragment(
        user_id="1", metric="heart_rate", start="2024-01-03", end="2024-01-04", resolution="1h"
    )
    enter_key(page, served, served.admin_key, warm_day)
    assert drawn(page)["meta"]["sources"] == ["warm"]
    refuse_connections(served.url)
    try:
        page.click("#show")
        expect(page.locator("#error")).to_contain_text("The server cannot answer now")
        expect(page.locator("#error")).to_contain_text("Retrying in 10 s")
    finally:
        allow_connections(served.url)
    shown = drawn(page, draws=2)  # after the 10 s the 503 named
    assert shown["meta"]["sources"] == ["warm"] and shown["points"][0] > 0
    expect(page.locator("#error")).to_be_hidden()
