"""`raysplit export`, `raysplit prune`, `raysplit events`: raw events between the event
database and the Parquet lake (docs/event_lake.md).

Each command turns its flags into one call into :mod:`raysplit.eventstore.lake.archive` or
:mod:`raysplit.eventstore.lake.reader`; a bad time, store, lake or experiment is one
:class:`RaysplitError` line (exit 2), as for every other command.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from typing import Any

from raysplit.core.errors import RaysplitError
from raysplit.core.settings import Locations

TABLE_COLUMNS = ("time", "request_id", "variant", "shadow", "outcome", "predicted", "label")
DEFAULT_LIMIT = 50


def _bound(flag: str, text: str | None, now: float) -> float | None:
    from raysplit.eventstore.labelled import parse_time_bound

    if text is None:
        return None
    try:
        return parse_time_bound(text, now)
    except ValueError as exc:
        raise RaysplitError(f"{flag}: {exc}") from None


def _window(args: argparse.Namespace, now: float) -> tuple[float | None, float]:
    since = _bound("--since", args.since, now)
    until = _bound("--until", args.until, now)
    until = now if until is None else until
    if since is not None and since >= until:
        raise RaysplitError(f"--since ({args.since}) must be before --until ({args.until})")
    return since, until


def _places(args: argparse.Namespace) -> tuple[str, str]:
    """The store and lake the flags name, else the ones `raysplit info` shows."""
    locations = Locations.resolve()
    store = getattr(args, "store", None)  # `events` reads the lake alone
    return store or locations.event_store_url, args.lake or locations.lake_uri


def cmd_export(args: argparse.Namespace) -> int:
    from raysplit.eventstore.labelled import iso_time, redact_url
    from raysplit.eventstore.lake.archive import export
    from raysplit.eventstore.lake.files import shown_uri

    store, lake = _places(args)
    since, until = _window(args, time.time())
    counts = export(store, lake, since, until)
    start = "the first event" if since is None else iso_time(since)
    print(
        f"exported {counts.predictions} predictions and {counts.feedback} feedback rows"
        f" ({counts.files} files) from {redact_url(store)} to {shown_uri(lake)},"
        f" {start} to {iso_time(until)}"
    )
    return 0


RETENTION_ENV = "RAYSPLIT_RETENTION"  # how long raw events stay in the database


def cmd_prune(args: argparse.Namespace) -> int:
    from raysplit.eventstore.labelled import iso_time, redact_url
    from raysplit.eventstore.lake.archive import prune
    from raysplit.eventstore.lake.files import shown_uri

    if args.no_archive and args.lake:
        raise RaysplitError("prune: give --lake or --no-archive, not both")
    if not args.older_than:
        raise RaysplitError(f"prune: give --older-than AGE (e.g. 30d) or set {RETENTION_ENV}")
    store, lake = _places(args)
    now = time.time()
    cutoff = _bound("--older-than", args.older_than, now)
    age = now - (now if cutoff is None else cutoff)  # the flag is required
    counts = prune(store, None if args.no_archive else lake, age, now=now)
    if counts.archived is not None:
        archived = counts.archived
        print(
            f"archived {archived.predictions} predictions and {archived.feedback} feedback"
            f" rows ({archived.files} files) to {shown_uri(lake)}"
        )
    print(
        f"deleted {counts.predictions} predictions and {counts.feedback} feedback rows"
        f" older than {iso_time(counts.cutoff)} from {redact_url(store)}"
        f" in {counts.batches} batches"
        + (f" and {counts.partitions} day partitions dropped" if counts.partitions else "")
        + "; the rollups (the report) are unchanged"
    )
    return 0


def _rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from raysplit.eventstore.lake.files import decode, experiments, open_lake, shown_uri
    from raysplit.eventstore.lake.reader import events_with_labels

    if args.limit < 0:
        raise RaysplitError("--limit: give a number of rows, or 0 for all")
    _, uri = _places(args)
    since, until = _window(args, time.time())
    lake = open_lake(uri)
    held = experiments(lake)
    if args.experiment not in held:
        holds = f"it holds: {', '.join(held)}" if held else "it holds no predictions yet"
        raise RaysplitError(
            f"event lake {shown_uri(uri)} has no predictions for experiment"
            f" '{args.experiment}'; {holds}"
        )
    table = events_with_labels(lake, args.experiment, since, until)
    if args.limit:  # the newest, still oldest first
        table = table.slice(max(0, table.num_rows - args.limit))
    rows = table.drop_columns(["experiment", "day"]).to_pylist()
    for row in rows:
        for name in ("inputs", "predictions", "probabilities", "label"):
            row[name] = decode(row[name])
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    from raysplit.eventstore.labelled import iso_time

    shown = [
        {
            "time": iso_time(r["created_at"]),
            "request_id": r["request_id"],
            "variant": r["variant"],
            "shadow": "yes" if r["shadow"] else "",
            "outcome": r["outcome"],
            "predicted": r["predicted"] if r["predicted"] is not None else "-",
            "label": r["label"] if r["label"] is not None else r["value"],
        }
        for r in rows
    ]
    cells = [[("" if r[c] is None else str(r[c])) for c in TABLE_COLUMNS] for r in shown]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(TABLE_COLUMNS)]
    header = "  ".join(c.upper().ljust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True))
    print(header.rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows)} prediction{'' if len(rows) == 1 else 's'}")


def cmd_events(args: argparse.Namespace) -> int:
    rows = _rows(args)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["request_id"])
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
            )
    else:
        _print_table(rows)
    return 0


def _places_flags(parser: argparse.ArgumentParser, store: bool = True) -> None:
    parser.add_argument(
        "--lake",
        metavar="URI",
        help="Parquet lake: a path or a pyarrow URI such as"
        " s3://bucket/events (default: RAYSPLIT_LAKE_URI, else the data home's lake/)",
    )
    if store:
        parser.add_argument(
            "--store", metavar="URL", help="event store (default: RAYSPLIT_EVENT_STORE_URL)"
        )


def add_lake_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """export, prune, events: raw events to the Parquet lake, the store's retention, and
    the lake read back."""
    window_help = "a duration back from now (90m, 36h, 7d) or an ISO-8601 time (UTC)"
    export = commands.add_parser(
        "export",
        help="copy raw events of a time window from the event store to the Parquet lake",
        description="Copy predictions and feedback with since <= time < until to the lake"
        " (partitioned by experiment and day). Exporting a window twice writes it twice;"
        " readers keep one copy.",
    )
    export.add_argument("--since", required=True, help=window_help)
    export.add_argument("--until", help=f"{window_help} (default: now)")
    _places_flags(export)
    export.set_defaults(func=cmd_export)

    prune = commands.add_parser(
        "prune",
        help="archive old raw events to the lake, then delete them from the event store",
        description="Export every prediction and feedback older than --older-than to the"
        " lake, then delete them from the store in batches. The rollups the report reads"
        " are kept, so the report is unchanged. Without a reachable lake nothing is"
        " deleted; --no-archive deletes without archiving.",
    )
    prune.add_argument(
        "--older-than",
        metavar="AGE",
        default=Locations.resolve().retention,
        help=f"{window_help}; default: ${RETENTION_ENV}, the deployment's retention (e.g. 30d),"
        " so a daily `raysplit prune` (cron, a Kubernetes CronJob) keeps the store to it",
    )
    prune.add_argument(
        "--no-archive", action="store_true", help="delete without copying to the lake first"
    )
    _places_flags(prune)
    prune.set_defaults(func=cmd_prune)

    events = commands.add_parser(
        "events",
        help="an experiment's predictions from the lake, with their labels",
        description="Read the lake: each prediction of the experiment in the window (live,"
        " shadow, failed) with its feedback, oldest first.",
    )
    events.add_argument("--experiment", required=True, metavar="NAME")
    events.add_argument("--since", help=window_help)
    events.add_argument("--until", help=f"{window_help} (default: now)")
    events.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"the newest N (default {DEFAULT_LIMIT}; 0: all)",
    )
    events.add_argument("--format", choices=["table", "json", "csv"], default="table")
    _places_flags(events, store=False)
    events.set_defaults(func=cmd_events)
