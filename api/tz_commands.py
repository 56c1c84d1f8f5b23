"""`stratum tz`: participants' time zones, for answers in their own calendar (tz=local)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from api.argtypes import non_negative, timestamp
from api.console import Context, console
from sync import zones


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tz = sub.add_parser("tz", help="participants' time zones (history of moves and travel)")
    tz_sub = tz.add_subparsers(dest="tz_action", required=True, metavar="ACTION")
    set_parser = tz_sub.add_parser("set", help="a participant's zone, from an instant on")
    set_parser.add_argument("user", type=non_negative, metavar="USER")
    set_parser.add_argument("tz", metavar="TZ", help="IANA name, e.g. Europe/Berlin")
    set_parser.add_argument(
        "--from",
        dest="valid_from",
        type=timestamp,
        default=None,
        metavar="TIMESTAMP",
        help="from this instant on (ISO 8601; no offset: UTC); default: from the start",
    )
    set_parser.set_defaults(run=tz_set)
    load = tz_sub.add_parser("load", help="a CSV of changes: user_id,valid_from,tz")
    load.add_argument("file", type=Path, metavar="FILE")
    load.set_defaults(run=tz_load)
    show = tz_sub.add_parser("show", help="a participant's zone history")
    show.add_argument("user", type=non_negative, metavar="USER")
    show.set_defaults(run=tz_show)


def tz_set(args: argparse.Namespace, ctx: Context) -> int:
    change = zones.change(args.user, args.tz, args.valid_from)
    zones.record(ctx.url, [change])
    since = "from the start" if change.valid_from == zones.DAWN else f"from {change.valid_from}"
    console.print(f"participant {change.user_id}: {change.tz} {since}")
    return 0


def tz_load(args: argparse.Namespace, ctx: Context) -> int:
    written = zones.record(ctx.url, zones.read_changes(args.file))
    console.print(f"{written:,} zone changes recorded from {args.file}")
    return 0


def tz_show(args: argparse.Namespace, ctx: Context) -> int:
    history = zones.history(ctx.url, args.user)
    if not history:
        default = ctx.settings.query.default_tz
        console.print(f"participant {args.user}: no history; STRATUM_DEFAULT_TZ ({default})")
        return 0
    table = Table(title=f"participant {args.user}")
    table.add_column("from (UTC)")
    table.add_column("tz")
    for valid_from, tz in history:
        since = "the start" if valid_from == zones.DAWN else valid_from.isoformat()
        table.add_row(since, tz)
    console.print(table)
    return 0
