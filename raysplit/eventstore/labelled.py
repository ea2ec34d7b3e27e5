"""Labelled production predictions read back from the event store, as training rows.

Retraining learns from what the live variants were asked and what users later said was
right: a single-row, answered, non-shadow prediction joined with its feedback, read
through the event store's own table definitions (:mod:`raysplit.eventstore.schema`).
Training reads a store by the URL its config names, so this reader opens an engine of its
own with a connect timeout rather than the serving side's :class:`EventStore`, which
migrates the schema it opens.

Every message names the store by its URL with the password hidden: these lines end up in
terminals, CI logs and MLflow tags.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from raysplit.core.errors import RaysplitError
from raysplit.eventstore.schema import feedback, predictions

if TYPE_CHECKING:
    import pyarrow as pa

LabelKind = Literal["label", "value"]  # feedback's label (classes) or value (regression)

UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
TIME_HELP = "give a duration back from now (e.g. 90m, 36h, 7d) or an ISO-8601 time"
CONNECT_TIMEOUT_S = 10
SHOWN_EXPERIMENTS = 20
DEFAULT_MIN_ROWS = 100  # a retrain's default floor (dataset.events.min_rows)


def duration_s(text: str) -> float | None:
    """Seconds in a duration such as ``7d``, ``36h`` or ``90m``; None if it is not one."""
    match = DURATION.match(text)
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)] if match else None


def parse_time_bound(text: str, now: float) -> float:
    """Unix seconds for ``7d`` (that long before ``now``) or an ISO-8601 time.

    A config says ``since: 7d`` so that the same file retrains on a moving window; an
    absolute time pins the window for a reproducible run. A time without an offset is
    UTC, so a window means the same on every machine. Raises ValueError (pydantic turns it
    into the config's one-line message).
    """
    back = duration_s(text)
    if back is not None:
        return now - back
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"'{text}' is not a time: {TIME_HELP}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def window_bounds(since: str | None, until: str | None, now: float) -> tuple[float | None, float]:
    """``(since, until)`` in unix seconds from a config's texts; ``until`` defaults to
    ``now``, so a run records a closed window that a later run can read again."""
    start = None if since is None else parse_time_bound(since, now)
    return start, now if until is None else parse_time_bound(until, now)


def iso_time(seconds: float) -> str:
    """``2026-05-01T12:00:00Z``: how windows are shown and recorded, always in UTC."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    text = moment.isoformat(timespec="milliseconds" if seconds % 1 else "seconds")
    return text.replace("+00:00", "Z")


def redact_url(url: str) -> str:
    """The store's URL as it may be shown: the password replaced by ``***``.

    A text that is not a URL at all is not echoed, since it may be a secret itself.
    """
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<not a database URL>"


@dataclass(frozen=True)
class EventQuery:
    """Which labelled predictions to read: the store (and the lake beside it), the
    experiment and ``[since, until)``.

    ``width`` is the number of features the model takes; ``kind`` says which feedback
    field is the target, or ``None`` to take whichever the experiment's feedback holds.
    """

    url: str
    experiment: str
    until: float
    width: int
    since: float | None = None
    kind: LabelKind | None = None
    # a Parquet lake (URI) holding rows the database may have pruned
    # (raysplit.eventstore.lake.archive): its rows join the database's, the database's win
    lake: str | None = None


@dataclass(frozen=True)
class EventWindow:
    """Where labelled rows were looked for, for messages and the run's record."""

    url: str  # redacted
    experiment: str
    since: float | None
    until: float

    @property
    def window(self) -> str:
        start = "the first event" if self.since is None else iso_time(self.since)
        return f"from {start} to {iso_time(self.until)}"


@dataclass(frozen=True)
class EventCount(EventWindow):
    """How many labelled rows a window holds, counted by the database: what the ingress
    checks before it submits a retrain, without reading the rows the job reads again.
    Rows the reader would skip (a wrong width, an unusable label) are counted too."""

    rows: int

    def skipped_text(self) -> str:
        return ""


@dataclass(frozen=True)
class LabelledEvents(EventWindow):
    """The rows read, oldest first (ties by request id, so both databases agree)."""

    kind: LabelKind
    request_ids: tuple[str, ...]
    created_at: tuple[float, ...]
    inputs: tuple[tuple[float, ...], ...]
    targets: tuple[Any, ...]
    width: int  # the model's number of features
    skipped_width: int = 0  # inputs whose width is not the model's
    skipped_invalid: int = 0  # a non-numeric input, or a label of the wrong kind

    @property
    def rows(self) -> int:
        return len(self.request_ids)

    @property
    def digest(self) -> str:
        """sha256 over every row's request id, inputs and target, in order: two runs that
        read the same rows record the same digest, whichever database held them."""
        digest = hashlib.sha256()
        for row in zip(self.request_ids, self.inputs, self.targets, strict=True):
            digest.update(json.dumps(row, separators=(",", ":")).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def skipped_text(self) -> str:
        """What was left out and why, for messages ("" when nothing was)."""
        parts = []
        if self.skipped_width:
            parts.append(
                f"{self.skipped_width} skipped: input width is not the model's {self.width}"
            )
        if self.skipped_invalid:
            parts.append(f"{self.skipped_invalid} skipped: non-numeric input or unusable label")
        return "; ".join(parts)


def _connect_args(url: URL) -> dict[str, Any]:
    backend = url.get_backend_name()
    if backend == "sqlite":
        return {"timeout": 30}
    if backend == "postgresql":
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    return {}


def error_reason(exc: BaseException, url: URL) -> str:
    """The driver's own first line, with the password cut out should it appear."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    text = f"{type(original).__name__}: {lines[0] if lines else ''}".strip()
    if url.password:
        text = text.replace(str(url.password), "***")
    return text[:300]


def open_store(url: str) -> Engine:
    """An engine on the store, refused with a clear line if it cannot be one.

    A missing SQLite file is refused rather than created: SQLite would make an empty
    database, and the search would then report "no predictions" for a typo in the path.
    """
    shown = redact_url(url)
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise RaysplitError(
            "event store URL is not a database URL (e.g. postgresql://user@host/db"
            " or sqlite:////absolute/path/events.db)"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise RaysplitError(f"event store {shown}: no such SQLite file")
    try:
        return sa.create_engine(parsed, connect_args=_connect_args(parsed))
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise RaysplitError(
            f"event store {shown}: cannot open: {error_reason(exc, parsed)}"
        ) from exc


def _require_experiment(conn: sa.Connection, experiment: str, shown: str) -> None:
    """Refuse an experiment the store never saw, listing the ones it did (a typo is the
    usual cause)."""
    p = predictions
    found = conn.execute(
        sa.select(p.c.request_id).where(p.c.experiment == experiment).limit(1)
    ).first()
    if found is not None:
        return
    names = conn.execute(sa.select(p.c.experiment).distinct()).scalars().all()
    names = sorted(names)
    if not names:
        raise RaysplitError(f"event store {shown} holds no predictions yet")
    listed = ", ".join(names[:SHOWN_EXPERIMENTS])
    more = f" and {len(names) - SHOWN_EXPERIMENTS} more" if len(names) > SHOWN_EXPERIMENTS else ""
    raise RaysplitError(
        f"event store {shown} has no predictions for experiment '{experiment}';"
        f" it holds: {listed}{more}"
    )


def _select(query: EventQuery) -> sa.Select:
    """Answered, non-shadow, single-row predictions of the experiment in the window, with
    their feedback. A multi-row request has one feedback for many rows, so it is left out
    in SQL, where its inputs need not be read."""
    p, f = predictions, feedback
    where = [
        p.c.experiment == query.experiment,
        p.c.shadow == sa.false(),
        p.c.outcome == "ok",
        p.c.created_at < query.until,
        sa.func.json_array_length(p.c.inputs) == 1,
    ]
    if query.since is not None:
        where.append(p.c.created_at >= query.since)
    return (
        sa.select(p.c.request_id, p.c.created_at, p.c.inputs, f.c.label, f.c.value)
        .select_from(p.join(f, p.c.request_id == f.c.request_id))
        .where(*where)
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _infer_kind(rows: Sequence[sa.Row], experiment: str) -> LabelKind:
    labels = sum(1 for r in rows if r.label is not None)
    values = sum(1 for r in rows if r.value is not None)
    if labels and values:
        raise RaysplitError(
            f"feedback for experiment '{experiment}' holds both labels ({labels}) and values"
            f" ({values}); say which is the target with dataset.task"
        )
    return "value" if values else "label"


def _target(row: sa.Row, kind: LabelKind) -> tuple[bool, Any]:
    """``(usable, target)``; a missing target means "not labelled", not an error."""
    if kind == "value":
        return (row.value is None or _number(row.value)), row.value
    label = row.label
    return (label is None or isinstance(label, str | int | float | bool)), label


def _collect(
    rows: Sequence[sa.Row], query: EventQuery, kind: LabelKind, shown: str
) -> LabelledEvents:
    """Keep the rows a model can learn from; count the bad ones instead of failing on
    them, so one malformed event never blocks the rest."""
    kept: list[tuple[float, str, tuple[float, ...], Any]] = []
    wrong_width = invalid = 0
    for row in rows:
        usable, target = _target(row, kind)
        if usable and target is None:
            continue
        values = row.inputs[0] if isinstance(row.inputs, list) and row.inputs else None
        if not isinstance(values, list) or not usable:
            invalid += 1
        elif len(values) != query.width:
            wrong_width += 1
        elif not all(_number(v) for v in values):
            invalid += 1
        else:
            kept.append((row.created_at, row.request_id, tuple(map(float, values)), target))
    kept.sort(key=lambda item: (item[0], item[1]))
    return LabelledEvents(
        url=shown,
        experiment=query.experiment,
        since=query.since,
        until=query.until,
        kind=kind,
        request_ids=tuple(k[1] for k in kept),
        created_at=tuple(k[0] for k in kept),
        inputs=tuple(k[2] for k in kept),
        targets=tuple(k[3] for k in kept),
        width=query.width,
        skipped_width=wrong_width,
        skipped_invalid=invalid,
    )


def _check_window(query: EventQuery) -> None:
    if query.since is not None and query.since >= query.until:
        raise RaysplitError(
            f"the window is empty: since {iso_time(query.since)} is not before until"
            f" {iso_time(query.until)}"
        )


def _query_store(
    query: EventQuery, run: Callable[[sa.Connection], Any], *, in_lake: bool = False
) -> Any:
    """``run(conn)`` on the store once the window, the store, its tables and the experiment
    have passed their checks; every failure is one RaysplitError line naming the store.
    An experiment the lake holds is known even when the store has pruned all its rows."""
    _check_window(query)
    engine = open_store(query.url)
    shown = redact_url(query.url)
    try:
        try:
            conn = engine.connect()
        except sa.exc.DBAPIError as exc:
            reason = error_reason(exc, engine.url)
            raise RaysplitError(f"event store {shown} is unreachable: {reason}") from exc
        with conn:
            try:
                tables = set(sa.inspect(conn).get_table_names())
                if not {predictions.name, feedback.name} <= tables:
                    raise RaysplitError(f"event store {shown} holds no raysplit event tables")
                if not in_lake:
                    _require_experiment(conn, query.experiment, shown)
                return run(conn)
            except sa.exc.DBAPIError as exc:
                reason = error_reason(exc, conn.engine.url)
                raise RaysplitError(f"event store {shown} could not be read: {reason}") from exc
    finally:
        engine.dispose()


class _LakeRow(NamedTuple):
    """A labelled row from the lake, shaped as the database's rows are read."""

    request_id: str
    created_at: float
    inputs: Any
    label: Any
    value: float | None


def _from_lake(query: EventQuery, use_ray: bool | None) -> tuple[pa.Table | None, bool]:
    """The lake's labelled rows of the window (None without a lake), and whether the lake
    holds the experiment at all."""
    if query.lake is None:
        return None, False
    from raysplit.eventstore.lake.files import experiments, open_lake
    from raysplit.eventstore.lake.reader import labelled_from_lake

    _check_window(query)
    lake = open_lake(query.lake)
    if query.experiment not in experiments(lake):
        return None, False
    table = labelled_from_lake(lake, query.experiment, query.since, query.until, use_ray=use_ray)
    return table, True


def read_labelled_events(query: EventQuery) -> LabelledEvents:
    """Read the experiment's labelled predictions in the window, oldest first.

    With ``query.lake``, rows the lake holds and the database no longer does (pruned)
    join the database's; a request in both is read from the database. The ordering and
    the digest do not depend on where a row came from, so a retrain reads the same rows
    before and after a prune. Ray Data reads the lake when Ray is initialised.

    Refuses (RaysplitError, one line) an unreachable store, a database without raysplit's
    tables, an unknown experiment and an empty window; rows whose inputs do not fit the
    model are skipped and counted (see :meth:`LabelledEvents.skipped_text`).
    """
    from_lake, in_lake = _from_lake(query, use_ray=None)
    rows: list[Any] = _query_store(
        query, lambda conn: conn.execute(_select(query)).all(), in_lake=in_lake
    )
    if from_lake is not None:
        from raysplit.eventstore.lake.files import decode

        stored = {r.request_id for r in rows}
        rows += [
            _LakeRow(
                r["request_id"],
                r["created_at"],
                decode(r["inputs"]),
                decode(r["label"]),
                r["value"],
            )
            for r in from_lake.to_pylist()
            if r["request_id"] not in stored
        ]
    kind = query.kind or _infer_kind(rows, query.experiment)
    return _collect(rows, query, kind, redact_url(query.url))


def count_labelled_events(query: EventQuery) -> EventCount:
    """How many rows :func:`read_labelled_events` would consider, with the same refusals.

    The database counts its rows in SQL. With a lake, the database's request ids are read
    instead, and the lake's rows by reading them (Parquet has no index to count a join
    with), always with pyarrow: this runs on the ingress, where Ray is initialised but a
    Ray Data job is not wanted; the union is counted once per request."""
    from_lake, in_lake = _from_lake(query, use_ray=False)
    if from_lake is None:
        counted = sa.select(sa.func.count()).select_from(_select(query).subquery())
        rows = _query_store(
            query, lambda conn: int(conn.execute(counted).scalar_one()), in_lake=in_lake
        )
    else:
        selected = _select(query).subquery()
        stored = _query_store(
            query,
            lambda conn: conn.execute(sa.select(selected.c.request_id)).scalars().all(),
            in_lake=in_lake,
        )
        rows = len(stored) + len(set(from_lake["request_id"].to_pylist()) - set(stored))
    return EventCount(redact_url(query.url), query.experiment, query.since, query.until, rows)


def require_rows(events: LabelledEvents | EventCount, min_rows: int) -> None:
    """Refuse to train on fewer rows than asked for, saying how many there are and where
    they were looked for, so the user can widen the window or lower the bar."""
    if events.rows >= min_rows:
        return
    skipped = events.skipped_text()
    raise RaysplitError(
        f"event store {events.url}: experiment '{events.experiment}' has {events.rows}"
        f" labelled single-row prediction{'' if events.rows == 1 else 's'} {events.window}"
        + (f" ({skipped})" if skipped else "")
        + f", fewer than min_rows={min_rows}; widen the window (since) or lower min_rows"
    )
