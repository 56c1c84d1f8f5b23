"""`stratum cohort`, `stratum key`, `stratum audit`: who may read what, and who read what.

A new key's text is printed once, as the last line of `stratum key create`, and nowhere
else: not logged, not stored (the warm store keeps its hash).
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta

from rich.table import Table

from api.argtypes import comma_list, duration, positive, timestamp
from api.console import Context, console
from sync import access


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cohort = sub.add_parser("cohort", help="named sets of participants that keys are scoped to")
    cohort_sub = cohort.add_subparsers(dest="cohort_action", required=True, metavar="ACTION")
    for action, run, text in (
        ("create", cohort_create, "create a cohort"),
        ("add", cohort_add, "add participants to a cohort"),
        ("remove", cohort_remove, "remove participants from a cohort"),
    ):
        parser = cohort_sub.add_parser(action, help=text)
        parser.add_argument("name", metavar="NAME")
        parser.add_argument("--users", required=True, help="ids and ranges, e.g. 1-40,52")
        parser.set_defaults(run=run)
    cohort_sub.add_parser("list", help="cohorts and their sizes").set_defaults(run=cohort_list)

    key = sub.add_parser("key", help="API keys: create (shown once), list, revoke")
    key_sub = key.add_subparsers(dest="key_action", required=True, metavar="ACTION")
    create = key_sub.add_parser("create", help="create a key; prints it once, as the last line")
    create.add_argument("--name", required=True)
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--cohort", action="append", default=[], metavar="C", help="cohorts it may read (repeat)"
    )
    scope.add_argument("--admin", action="store_true", help="every participant, /metrics")
    create.add_argument("--metrics", type=comma_list, default=None, help="a,b (default: all)")
    create.add_argument("--expires", type=duration, default=None, help="e.g. 90d, 12h, 2w")
    create.set_defaults(run=key_create)
    key_sub.add_parser("list", help="keys, scopes and states (never the keys)").set_defaults(
        run=key_list
    )
    revoke = key_sub.add_parser("revoke", help="stop a key working, at once")
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(run=key_revoke)

    audit = sub.add_parser("audit", help="who read what: the access log, newest first")
    audit.add_argument("--key", default=None, help="only this key's requests")
    audit.add_argument("--user", type=int, default=None, help="only requests for this participant")
    audit.add_argument("--since", type=timestamp, default=None, help="date or date-time (UTC)")
    audit.add_argument("--limit", type=positive, default=100)
    audit.add_argument(
        "--prune",
        action="store_true",
        help="drop rows older than $STRATUM_AUDIT_RETENTION_DAYS first",
    )
    audit.set_defaults(run=audit_command)


def cohort_create(args: argparse.Namespace, ctx: Context) -> int:
    users = access.parse_user_ranges(args.users)
    added = access.create_cohort(ctx.url, args.name, users)
    console.print(f"cohort {args.name}: {added:,} participants")
    return 0


def cohort_add(args: argparse.Namespace, ctx: Context) -> int:
    added = access.add_members(ctx.url, args.name, access.parse_user_ranges(args.users))
    console.print(f"cohort {args.name}: {added:,} participants added")
    return 0


def cohort_remove(args: argparse.Namespace, ctx: Context) -> int:
    removed = access.remove_members(ctx.url, args.name, access.parse_user_ranges(args.users))
    console.print(f"cohort {args.name}: {removed:,} participants removed")
    return 0


def cohort_list(args: argparse.Namespace, ctx: Context) -> int:
    table = Table(title="cohorts")
    for column in ("name", "participants", "ids"):
        table.add_column(column)
    for info in access.list_cohorts(ctx.url):
        ids = "" if info.first_user is None else f"{info.first_user}..{info.last_user}"
        table.add_row(info.name, f"{info.members:,}", ids)
    console.print(table)
    return 0


def key_create(args: argparse.Namespace, ctx: Context) -> int:
    key_text = access.create_key(
        ctx.url,
        args.name,
        admin=args.admin,
        cohorts=args.cohort,
        metrics=args.metrics,
        expires_in=args.expires,
    )
    scope = "admin" if args.admin else f"cohorts {', '.join(args.cohort)}"
    console.print(f"key {args.name} ({scope}); it is shown once, store it now:")
    print(key_text)  # the last line, plain, so scripts can take it with `tail -1`
    return 0


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def key_list(args: argparse.Namespace, ctx: Context) -> int:
    table = Table(title="keys")
    for column in ("name", "scope", "metrics", "created", "expires", "state"):
        table.add_column(column)
    now = datetime.now().astimezone()
    for info in access.list_keys(ctx.url):
        scope = "admin" if info.admin else ", ".join(info.cohorts)
        metrics = "all" if info.metrics is None else ", ".join(info.metrics)
        if info.revoked_at is not None:
            state = f"revoked {_when(info.revoked_at)}"
        elif info.expires_at is not None and info.expires_at <= now:
            state = "expired"
        else:
            state = "live"
        table.add_row(
            info.name, scope, metrics, _when(info.created_at), _when(info.expires_at), state
        )
    console.print(table)
    return 0


def key_revoke(args: argparse.Namespace, ctx: Context) -> int:
    was_live = access.revoke_key(ctx.url, args.name)
    console.print(f"key {args.name} revoked" if was_live else f"key {args.name} was revoked")
    return 0


def audit_command(args: argparse.Namespace, ctx: Context) -> int:
    if args.prune:
        days = ctx.settings.access.audit_retention_days
        dropped = access.prune_audit(ctx.url, timedelta(days=days))
        console.print(f"dropped {dropped:,} access-log rows older than {days} days")
    rows = access.read_audit(
        ctx.url, key_name=args.key, user_id=args.user, since=args.since, limit=args.limit
    )
    table = Table(title="access log (newest first)")
    columns = ("at", "key", "request", "users", "metrics", "span", "format", "rows", "bytes")
    for column in (*columns, "status", "ms", "client"):
        table.add_column(column)
    for row in rows:
        users = row["users"] or []
        users_text = ",".join(map(str, users[:10])) + ("..." if len(users) > 10 else "")
        span = ""
        if row["span_start"] is not None:
            span = f"{row['span_start'].isoformat()}..{row['span_end'].isoformat()}"
        table.add_row(
            _when(row["at"]),
            row["key_name"],
            f"{row['method']} {row['path']}",
            users_text,
            ",".join(row["metrics"] or []),
            span,
            row["format"] or "",
            "" if row["rows"] is None else f"{row['rows']:,}",
            f"{row['bytes']:,}",
            str(row["status"]),
            f"{row['duration_ms']:.0f}",
            row["client"] or "",
        )
    console.print(table)
    return 0
