"""The Parquet lake beside the event database: every raw prediction and feedback event as
files, partitioned by experiment and day, on any filesystem pyarrow reaches.

The database keeps the rollups the report reads and a retention window of raw rows
(:mod:`raysplit.eventstore.lake.archive`); the lake keeps the raw events for as long as storage
is cheap, and Ray Data or pyarrow read it for retraining and analysis without touching the
database (docs/event_lake.md)::

    <root>/predictions/experiment=<name>/day=<YYYY-MM-DD>/<epoch ms>-<uuid>.parquet
    <root>/feedback/day=<YYYY-MM-DD>/<epoch ms>-<uuid>.parquet

Files are only ever added, never rewritten: each write makes new files with unique names,
written under a hidden temporary name and then moved into place, so a reader never sees
half a file and two writers never collide. Writing the same rows twice therefore stores
them twice, and every read drops the repeats (the first is kept) by the database's own
keys: ``(request_id, variant)`` for predictions, ``request_id`` for feedback.

The columns are the database's (:mod:`raysplit.eventstore.schema`) without its row id;
the JSON columns are kept as JSON text (orjson), which every Parquet reader can hold.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import sqlalchemy as sa

from raysplit.core.errors import RaysplitError
from raysplit.eventstore.schema import feedback, predictions

Kind = Literal["predictions", "feedback"]
KINDS: tuple[Kind, ...] = ("predictions", "feedback")
JSON_COLUMNS = frozenset({"inputs", "predictions", "probabilities", "label"})
# what partitions each kind, outermost first; "day" is derived from created_at (UTC)
PARTITIONS: dict[Kind, tuple[str, ...]] = {
    "predictions": ("experiment", "day"),
    "feedback": ("day",),
}
# the database's unique keys: the same event exported twice is one row when read
KEYS: dict[Kind, tuple[str, ...]] = {
    "predictions": ("request_id", "variant"),
    "feedback": ("request_id",),
}
_TABLES: dict[Kind, sa.Table] = {"predictions": predictions, "feedback": feedback}
DAY_S = 86_400.0
COMPRESSION = "zstd"


def _arrow_type(column: sa.Column) -> pa.DataType:
    kind = column.type
    if isinstance(kind, sa.JSON | sa.String):
        return pa.string()
    if isinstance(kind, sa.Boolean):
        return pa.bool_()
    if isinstance(kind, sa.Integer):
        return pa.int64()
    if isinstance(kind, sa.Float):
        return pa.float64()
    raise TypeError(f"{column.table.name}.{column.name}: no Parquet type for {kind!r}")


def row_schema(kind: Kind) -> pa.Schema:
    """The columns a batch of ``kind`` rows carries: the database table's, without its row
    id. Derived from the table, so a column added there is exported without a change here;
    older files simply read it as null."""
    return pa.schema([(c.name, _arrow_type(c)) for c in _TABLES[kind].columns if c.name != "id"])


def file_schema(kind: Kind) -> pa.Schema:
    """What a file holds: the row's columns without those its directory names."""
    schema = row_schema(kind)
    for name in PARTITIONS[kind]:
        if name in schema.names:
            schema = schema.remove(schema.get_field_index(name))
    return schema


def dataset_schema(kind: Kind) -> pa.Schema:
    """What a read sees: the file's columns and the partition columns (strings)."""
    schema = file_schema(kind)
    for name in PARTITIONS[kind]:
        schema = schema.append(pa.field(name, pa.string()))
    return schema


@dataclass(frozen=True)
class Lake:
    """An opened lake: its filesystem and the root path inside it."""

    uri: str
    filesystem: pafs.FileSystem
    root: str

    @property
    def shown(self) -> str:
        return shown_uri(self.uri)

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))


def shown_uri(uri: str) -> str:
    """The URI as it may be printed: without user info (``s3://key:secret@bucket``) or
    query options, either of which may carry credentials."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<not a URI>"
    if not parts.scheme:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def lake_error(lake: Lake | str, doing: str, exc: BaseException) -> RaysplitError:
    """One line naming the lake and the filesystem's own first line."""
    shown = lake.shown if isinstance(lake, Lake) else shown_uri(lake)
    lines = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()[:300]
    return RaysplitError(f"event lake {shown}: cannot {doing}: {reason}")


def open_lake(uri: str | Lake) -> Lake:
    """The lake at ``uri``: any URI ``pyarrow.fs.FileSystem.from_uri`` accepts
    (``s3://bucket/events``, ``gs://...``, ``file:///...``) or a plain local path, made
    absolute because Ray workers do not share the caller's working directory."""
    if isinstance(uri, Lake):
        return uri
    text = uri.strip()
    if not text:
        raise RaysplitError("event lake: the URI is empty")
    if "://" not in text:
        text = str(Path(text).expanduser().resolve())
    try:
        filesystem, root = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise lake_error(uri, "open it as a pyarrow filesystem URI", exc) from exc
    return Lake(uri=text, filesystem=filesystem, root=root.rstrip("/") or "/")


def _encode(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _json_text(values: Sequence[Any]) -> list[str | None]:
    """A JSON column as the database holds it (text): JSON null is no value."""
    return [
        None if v is None or v == "null" else v if isinstance(v, str) else _encode(v)
        for v in values
    ]


def _by_column(rows: Sequence[Any], names: Sequence[str]) -> dict[str, Sequence[Any]]:
    """Rows turned into columns: SQLAlchemy rows are tuples, transposed at C speed (export
    spent two thirds of its time reading them as mappings); a missing column is null."""
    if rows and not isinstance(rows[0], Mapping):
        columns = dict(zip(rows[0]._fields, zip(*rows, strict=True), strict=True))
        return {name: columns.get(name, [None] * len(rows)) for name in names}
    return {name: [r.get(name) for r in rows] for name in names}


def rows_to_table(kind: Kind, rows: Iterable[Any], *, json_encoded: bool = False) -> pa.Table:
    """A batch of rows (mappings, or SQLAlchemy rows) as an Arrow table of
    :func:`row_schema`. JSON columns hold Python values, or with ``json_encoded`` their
    JSON text as the database stores it (export reads it so, saving a decode and an
    encode per value)."""
    schema = row_schema(kind)
    columns = _by_column(list(rows), schema.names)
    arrays = []
    for field in schema:
        values = columns[field.name]
        if field.name in JSON_COLUMNS:
            values = _json_text(values) if json_encoded else [_encode(v) for v in values]
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _days(created_at: pa.ChunkedArray) -> pa.ChunkedArray:
    """``YYYY-MM-DD`` (UTC) of each unix time."""
    number = pc.cast(pc.floor(pc.divide(created_at, DAY_S)), pa.int32())
    return pc.cast(pc.cast(number, pa.date32()), pa.string())


def day_of(seconds: float) -> str:
    return _days(pa.chunked_array([[float(seconds)]], pa.float64()))[0].as_py()


def _partition_dir(lake: Lake, kind: Kind, values: Mapping[str, str]) -> str:
    return lake.path(kind, *(f"{k}={quote(values[k], safe='')}" for k in PARTITIONS[kind]))


def experiment_dir(lake: Lake, experiment: str) -> str:
    """Where an experiment's predictions are (its name is URI-quoted, as Hive paths are)."""
    return lake.path("predictions", f"experiment={quote(experiment, safe='')}")


def _write_file(lake: Lake, directory: str, table: pa.Table) -> str:
    """One new file, complete before it has its name: readers skip the hidden name
    (a leading dot, and no .parquet ending for Ray) until the move."""
    name = f"{int(time.time() * 1000)}-{uuid.uuid4().hex}.parquet"
    final, temporary = f"{directory}/{name}", f"{directory}/.{name}.tmp"
    lake.filesystem.create_dir(directory, recursive=True)
    pq.write_table(table, temporary, filesystem=lake.filesystem, compression=COMPRESSION)
    lake.filesystem.move(temporary, final)
    return final


def write_table(lake: str | Lake, kind: Kind, table: pa.Table) -> list[str]:
    """Write ``table`` (columns of :func:`row_schema`) as new files, one per partition it
    touches; returns their paths."""
    lake = open_lake(lake)
    if table.num_rows == 0:
        return []
    table = table.append_column("day", _days(table["created_at"]))
    keys = list(PARTITIONS[kind])
    written = []
    try:
        for combo in table.group_by(keys, use_threads=False).aggregate([]).to_pylist():
            mask = None
            for key in keys:
                match = pc.equal(table[key], pa.scalar(combo[key], pa.string()))
                mask = match if mask is None else pc.and_(mask, match)
            part = table.filter(mask).select(file_schema(kind).names)
            written.append(_write_file(lake, _partition_dir(lake, kind, combo), part))
    except (pa.ArrowException, OSError) as exc:
        raise lake_error(lake, f"write {kind}", exc) from exc
    return written


def write_predictions(lake: str | Lake, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Write prediction rows (``PredictionEvent.row()``, or the table's columns)."""
    return write_table(lake, "predictions", rows_to_table("predictions", rows))


def write_feedback(lake: str | Lake, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Write feedback rows (``FeedbackEvent.row()``, or the table's columns)."""
    return write_table(lake, "feedback", rows_to_table("feedback", rows))


def _exists(lake: Lake, path: str) -> bool:
    try:
        return lake.filesystem.get_file_info(path).type != pafs.FileType.NotFound
    except (pa.ArrowException, OSError) as exc:
        raise lake_error(lake, "read it", exc) from exc


def experiments(lake: str | Lake) -> list[str]:
    """The experiments the lake holds predictions of, sorted."""
    lake = open_lake(lake)
    base = lake.path("predictions")
    if not _exists(lake, base):
        return []
    try:
        found = lake.filesystem.get_file_info(pafs.FileSelector(base))
    except (pa.ArrowException, OSError) as exc:
        raise lake_error(lake, "list its experiments", exc) from exc
    names = [
        unquote(info.base_name.removeprefix("experiment="))
        for info in found
        if info.type == pafs.FileType.Directory and info.base_name.startswith("experiment=")
    ]
    return sorted(names)


def day_dirs(lake: str | Lake, experiment: str, since: float | None, until: float) -> list[str]:
    """The day directories of an experiment that may hold rows in ``[since, until)``: what
    a reader that lists its own files (Ray Data) is given."""
    lake = open_lake(lake)
    base = experiment_dir(lake, experiment)
    if not _exists(lake, base):
        return []
    first, last = (None if since is None else day_of(since)), day_of(until)
    try:
        found = lake.filesystem.get_file_info(pafs.FileSelector(base))
    except (pa.ArrowException, OSError) as exc:
        raise lake_error(lake, "list its days", exc) from exc
    kept = []
    for info in sorted(found, key=lambda i: i.path):
        day = info.base_name.removeprefix("day=")
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("day="):
            continue
        if (first is None or day >= first) and day <= last:
            kept.append(info.path)
    return kept


def window_filter(
    kind: Kind, experiment: str | None, since: float | None, until: float | None
) -> ds.Expression | None:
    """The rows of ``experiment`` with ``since <= created_at < until``; the day partitions
    outside the window are skipped without being opened."""
    parts = []
    if experiment is not None and "experiment" in PARTITIONS[kind]:
        parts.append(ds.field("experiment") == experiment)
    if since is not None:
        parts += [ds.field("day") >= day_of(since), ds.field("created_at") >= since]
    if until is not None:
        parts += [ds.field("day") <= day_of(until), ds.field("created_at") < until]
    expression = None
    for part in parts:
        expression = part if expression is None else expression & part
    return expression


def first_of_each(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Each key's first row, in the table's order: the repeats a second export wrote
    are dropped."""
    if table.num_rows == 0:
        return table
    numbered = table.append_column("__row", pa.array(range(table.num_rows), pa.int64()))
    firsts = numbered.group_by(list(keys), use_threads=False).aggregate([("__row", "min")])
    rows = firsts["__row_min"]
    return table.take(pc.take(rows, pc.sort_indices(rows)))


def read_table(
    lake: str | Lake,
    kind: Kind,
    *,
    experiment: str | None = None,
    since: float | None = None,
    until: float | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """The ``kind`` rows in the window (of one experiment, for predictions), each event
    once, ordered by ``created_at`` then the key. JSON columns stay JSON text."""
    lake = open_lake(lake)
    schema = dataset_schema(kind)
    keys = KEYS[kind]
    wanted = list(columns) if columns is not None else schema.names
    reading = list(dict.fromkeys([*wanted, *keys, "created_at"]))
    base = lake.path(kind)
    if not _exists(lake, base):
        return schema.empty_table().select(wanted)
    partitioning = ds.partitioning(
        pa.schema([(name, pa.string()) for name in PARTITIONS[kind]]), flavor="hive"
    )
    try:
        dataset = ds.dataset(
            base,
            filesystem=lake.filesystem,
            format="parquet",
            partitioning=partitioning,
            schema=schema,
        )
        table = dataset.to_table(
            columns=reading, filter=window_filter(kind, experiment, since, until)
        )
    except (pa.ArrowException, OSError) as exc:
        raise lake_error(lake, f"read {kind}", exc) from exc
    table = first_of_each(table, keys)
    order = [("created_at", "ascending"), *((k, "ascending") for k in keys)]
    return table.sort_by(order).select(wanted)


def decode(text: str | None) -> Any:
    """A JSON column's value back as Python."""
    return None if text is None else orjson.loads(text)
