"""`stratum query`, `stratum serve` and `stratum demo --serve` (the server itself is not run)."""

from __future__ import annotations

import argparse
import csv
import io
import shlex
from pathlib import Path
from typing import Any

import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient

from api import commands
from api.cli import main
from tests.api.conftest import MAX_USERS, admin_client, api_settings
from tests.engine.test_hostile_input import nested

SPAN = shlex.split(
    "--user 1 --user 2,3 --metric heart_rate,steps --start 2024-01-01 --end 2024-01-03"
)


@pytest.fixture
def env(cohort_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STRATUM_DATABASE_URL", cohort_url)
    monkeypatch.setenv("STRATUM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STRATUM_MAX_USERS", str(MAX_USERS))
    return cohort_url


def http_rows(cohort_url: str, tmp_path: Path, **params: str) -> list[dict[str, Any]]:
    from api.app import create_app

    query = {
        "user_id": "1,2,3",
        "metric": "heart_rate,steps",
        "start": "2024-01-01",
        "end": "2024-01-03",
        "page_size": "50000",
        **params,
    }
    with admin_client(
        create_app(api_settings(tmp_path / "http"), cohort_url), cohort_url
    ) as client:
        body = client.get("/data", params=query).json()
    return list(body["data"])


def test_query_csv_to_stdout_equals_the_http_answer(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", *SPAN, "--resolution", "1h", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    expected = http_rows(env, tmp_path, resolution="1h")
    assert len(rows) == len(expected) > 0
    assert [(int(r["user_id"]), r["metric"], r["ts"], float(r["avg"])) for r in rows] == [
        (r["user_id"], r["metric"], r["ts"], r["avg"]) for r in expected
    ]


def test_query_m4_equals_the_http_answer(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m4 = ["--resolution", "raw", "--downsample", "m4", "--width", "50", "--format", "csv"]
    assert main(["query", *SPAN, *m4, "--page-size", "0"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    expected = http_rows(env, tmp_path, resolution="raw", downsample="m4", width="50")
    assert 0 < len(rows) == len(expected) <= 3 * 2 * 50 * 4
    assert [(int(r["user_id"]), r["metric"], r["ts"]) for r in rows] == [
        (r["user_id"], r["metric"], r["ts"]) for r in expected
    ]


@pytest.mark.parametrize("format_name", ["parquet", "arrow"])
def test_query_binary_formats_to_a_file(env: str, tmp_path: Path, format_name: str) -> None:
    out = tmp_path / f"answer.{format_name}"
    args = ["query", *SPAN, *shlex.split(f"--resolution raw --page-size 0 --format {format_name}")]
    args += ["--out", str(out)]
    assert main(args) == 0
    if format_name == "parquet":
        table = pq.read_table(out)
    else:
        table = ipc.open_stream(out.read_bytes()).read_all()
    assert table.column_names == ["user_id", "metric", "ts", "value"]
    assert table.num_rows == len(http_rows(env, tmp_path, resolution="raw"))
    assert not out.with_name(out.name + ".part").exists()


def test_query_table_prints_rows_and_the_next_cursor(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", *SPAN, "--resolution", "1d", "--page-size", "3"]) == 0
    captured = capsys.readouterr()
    assert "1d rows from warm" in captured.out and "2024-01-01T00:00:00Z" in captured.out
    assert "3 rows" in captured.err and "--cursor " in captured.err
    cursor = captured.err.split("--cursor ")[1].split()[0]
    assert main(["query", *SPAN, "--resolution", "1d", "--page-size", "3", "--cursor", cursor]) == 0


@pytest.mark.parametrize(
    ("extra", "parameter"),
    [
        (["--metric", "pulse"], "metric"),
        (["--page-size", "0"], "page_size"),  # the table needs pages
        (["--resolution", "5m"], "resolution"),
        (["--cursor", "nope"], "cursor"),
        # Each was an unexpected error (exit 1): an overflow, a recursion, a driver's error.
        (["--end", "9999-12-31T23:59:59Z"], "end"),
        (["--start", "0001-01-01T00:00:00+01:00"], "start"),
        (["--cursor", nested(3000)], "cursor"),
        (["--user", "\u0661"], "user_id"),
    ],
)
def test_query_errors_name_the_parameter(
    env: str, capsys: pytest.CaptureFixture[str], extra: list[str], parameter: str
) -> None:
    assert main(["query", *SPAN, *extra]) == 2
    err = capsys.readouterr().err
    assert f"error: {parameter}:" in err and "Traceback" not in err


def test_serve_runs_uvicorn_with_the_configured_address(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run(app: Any, **kwargs: Any) -> None:
        calls.append({"app": app, **kwargs})

    monkeypatch.setattr("uvicorn.run", fake_run)
    monkeypatch.setenv("STRATUM_PORT", "8123")
    monkeypatch.setenv("STRATUM_SEND_TIMEOUT_S", "7")
    monkeypatch.setenv("STRATUM_IDLE_TIMEOUT_S", "3")
    assert main(["serve"]) == 0
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 8123
    # The served protocol carries the timeouts (tests/api/test_hostile_clients.py shows them).
    from api.serving import GuardedH11Protocol

    protocol = calls[0]["http"]
    assert issubclass(protocol, GuardedH11Protocol)
    assert (protocol.send_timeout_s, protocol.idle_timeout_s) == (7, 3)
    assert calls[0]["timeout_keep_alive"] == 3
    assert main(["serve", "--host", "0.0.0.0", "--port", "9000"]) == 0
    assert calls[1]["host"] == "0.0.0.0" and calls[1]["port"] == 9000


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.org"])
def test_serve_with_auth_off_refuses_a_non_loopback_bind(
    host: str,
    env: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append(kwargs))
    monkeypatch.setenv("STRATUM_AUTH", "off")
    assert main(["serve", "--host", host]) == 2
    err = capsys.readouterr().err
    assert "STRATUM_AUTH=off" in err and host in err and "loopback" in err
    assert calls == []
    for loopback in ("127.0.0.1", "::1", "localhost"):
        assert main(["serve", "--host", loopback]) == 0
    assert [c["host"] for c in calls] == ["127.0.0.1", "::1", "localhost"]


def test_demo_serve_prints_three_requests_then_serves(
    env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[argparse.Namespace] = []

    def fake_serve(args: argparse.Namespace, ctx: commands.Context) -> int:
        served.append(args)
        return 0

    monkeypatch.setattr(commands, "serve", fake_serve)
    assert main(["demo", "--users", "1", "--days", "1", "--serve", "--port", "8765"]) == 0
    out = capsys.readouterr().out
    assert out.count("curl ") == 3 and "http://127.0.0.1:8765/data?" in out
    assert served and served[0].port == 8765


def test_demo_requests_are_valid_queries(tmp_path: Path, cohort_url: str) -> None:
    from datetime import date

    from api.app import create_app

    key_text = commands.demo_key(cohort_url, 3)  # scoped to the demo cohort, not an admin
    requests = commands.demo_requests("http://testserver", 3, date(2024, 1, 1), 2, key_text)
    assert len(requests) == 3
    with TestClient(create_app(api_settings(tmp_path), cohort_url)) as client:
        for request in requests:
            header = request.split('"')[1]
            assert header == f"Authorization: Bearer {key_text}"
            client.headers["Authorization"] = header.split(": ", 1)[1]
            url = request.split("'")[1].replace("http://testserver", "")
            response = client.get(url)
            assert response.status_code == 200, response.text
            assert response.content


@pytest.mark.parametrize("command", ["query", "generate"])
def test_out_into_a_missing_folder_names_the_option_and_folder(
    command: str, env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-folder"
    argv = {
        "query": ["query", *SPAN, "--format", "csv"],
        "generate": ["generate", "--users", "1", "--days", "1"],
    }[command]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(missing / "answer.csv")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --out: folder '{missing}' does not exist" in err
    assert "Traceback" not in err and not missing.exists()


def test_query_table_shows_every_value_whole(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Hourly rollups carry long sums and averages: piped output is 80 columns to rich.
    argv = ["query", *SPAN, "--resolution", "1h", "--page-size", "20"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    lines = [line for line in out.splitlines() if "│" in line]
    expected = http_rows(env, tmp_path, resolution="1h", page_size="20")
    assert len(lines) == len(expected)
    for line, row in zip(lines, expected, strict=True):
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        values = [repr(v) if isinstance(v, float) else str(v) for v in row.values()]
        assert cells == values


def test_query_takes_start_date_and_end_date(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    users = ["--user", "1,2,3", "--metric", "steps", "--format", "csv", "--resolution", "1h"]
    assert main(["query", *users, "--start", "2024-01-01", "--end", "2024-01-03"]) == 0
    by_instants = capsys.readouterr().out
    assert main(["query", *users, "--start-date", "2024-01-01", "--end-date", "2024-01-02"]) == 0
    assert capsys.readouterr().out == by_instants
    assert (
        main(
            [
                "query",
                *users,
                "--start",
                "2024-01-01",
                "--start-date",
                "2024-01-01",
                "--end",
                "2024-01-03",
            ]
        )
        == 2
    )
    assert "error: start_date: start and start_date both" in capsys.readouterr().err
