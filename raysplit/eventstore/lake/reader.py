"""The lake's predictions joined with their feedback: the labelled rows a retrain learns
from, and every prediction with its label for people to look at.

The labelled rows are the event database's (:mod:`raysplit.eventstore.labelled`): the
experiment's answered, non-shadow, single-row predictions in ``[since, until)`` that
have feedback. On a Ray cluster (Ray already initialised, or asked for) Ray Data reads
the prediction files in parallel; elsewhere pyarrow alone does, so laptops and unit tests
need no cluster. Both paths run the same join (:func:`labelled_batch`) and the same final
ordering, so they give the same rows.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from raysplit.eventstore.lake.files import (
    Lake,
    day_dirs,
    first_of_each,
    lake_error,
    open_lake,
    read_table,
)

LABELLED_COLUMNS = ("request_id", "created_at", "inputs", "label", "value")
LABEL_COLUMNS = ("request_id", "label", "value")
# what a labelled row needs of its prediction
PREDICTION_COLUMNS = ("request_id", "variant", "created_at", "shadow", "outcome", "inputs")
LABELLED_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("created_at", pa.float64()),
        ("inputs", pa.string()),
        ("label", pa.string()),
        ("value", pa.float64()),
    ]
)


def _single_row(text: str | None) -> bool:
    if text is None:
        return False
    inputs = orjson.loads(text)
    return isinstance(inputs, list) and len(inputs) == 1


def labelled_batch(
    batch: pa.Table, labels: pa.Table, since: float | None, until: float
) -> pa.Table:
    """One batch of predictions reduced to its labelled training rows: answered, live,
    single-row, in the window, joined with ``labels`` (request id, label, value). A
    multi-row request has one label for many rows, so it is left out, as the database
    reader leaves it out."""
    mask = pc.and_(pc.invert(batch["shadow"]), pc.equal(batch["outcome"], "ok"))
    mask = pc.and_(mask, pc.less(batch["created_at"], until))
    if since is not None:
        mask = pc.and_(mask, pc.greater_equal(batch["created_at"], since))
    kept = batch.filter(mask).select(["request_id", "created_at", "inputs"])
    single = pa.array([_single_row(t) for t in kept["inputs"].to_pylist()], pa.bool_())
    kept = kept.filter(single) if kept.num_rows else kept
    joined = kept.join(labels.select(list(LABEL_COLUMNS)), "request_id", join_type="inner")
    return joined.select(list(LABELLED_COLUMNS)).cast(LABELLED_SCHEMA)


def _ordered(table: pa.Table) -> pa.Table:
    """Oldest first, ties by request id (as the database reader orders), each request
    once: a prediction exported twice is one row."""
    table = table.sort_by([("created_at", "ascending"), ("request_id", "ascending")])
    return first_of_each(table, ["request_id"])


def _labels(lake: Lake) -> pa.Table:
    """Every feedback row's label, each request once. All of it, not only the window's:
    a label's time says when it arrived, not which prediction it answers."""
    return read_table(lake, "feedback", columns=list(LABEL_COLUMNS))


def _ray_ready() -> bool:
    """Ray is imported and initialised: the caller runs on a cluster (a retrain job).
    Ray itself is never imported here just to ask."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _ray_batch(
    batch: pa.Table, labels: Any, since: float | None, until: float
) -> pa.Table:  # pragma: no cover - runs in Ray workers
    import ray

    if isinstance(labels, ray.ObjectRef):
        labels = ray.get(labels)
    return labelled_batch(batch, labels, since, until)


def _with_ray(
    lake: Lake, experiment: str, since: float | None, until: float, labels: pa.Table
) -> pa.Table:
    """Ray Data reads the window's day directories (Hive partitioning) and joins each
    block with the labels, shipped once through the object store. Ray Data's own join
    needs polars and a hash shuffle; the labels (three columns) fit in memory."""
    import ray
    from ray.data.datasource.partitioning import Partitioning

    directories = day_dirs(lake, experiment, since, until)
    if not directories:
        return LABELLED_SCHEMA.empty_table()
    base = lake.path("predictions")
    dataset = ray.data.read_parquet(
        directories,
        filesystem=lake.filesystem,
        columns=list(PREDICTION_COLUMNS),
        partitioning=Partitioning("hive", base_dir=base, field_names=["experiment", "day"]),
    )
    joined = dataset.map_batches(
        _ray_batch,
        batch_format="pyarrow",
        fn_kwargs={"labels": ray.put(labels), "since": since, "until": until},
    )
    tables = [ray.get(ref) for ref in joined.to_arrow_refs()]
    tables = [t.select(list(LABELLED_COLUMNS)).cast(LABELLED_SCHEMA) for t in tables]
    return pa.concat_tables([LABELLED_SCHEMA.empty_table(), *tables])


def labelled_from_lake(
    lake_uri: str | Lake,
    experiment: str,
    since: float | None,
    until: float,
    *,
    use_ray: bool | None = None,
) -> pa.Table:
    """The experiment's labelled rows in ``[since, until)``: request id, time, inputs and
    label as JSON text, value; oldest first, each request once.

    ``use_ray``: True reads with Ray Data (starting a local Ray if none is running),
    False with pyarrow alone; None (the default) uses Ray Data only if Ray is already
    initialised.
    """
    lake = open_lake(lake_uri)
    labels = _labels(lake)
    if use_ray if use_ray is not None else _ray_ready():
        try:
            return _ordered(_with_ray(lake, experiment, since, until, labels))
        except (pa.ArrowException, OSError) as exc:
            raise lake_error(lake, "read predictions with Ray Data", exc) from exc
    found = read_table(
        lake,
        "predictions",
        experiment=experiment,
        since=since,
        until=until,
        columns=list(PREDICTION_COLUMNS),
    )
    return _ordered(labelled_batch(found, labels, since, until))


def events_with_labels(
    lake_uri: str | Lake, experiment: str, since: float | None, until: float | None
) -> pa.Table:
    """Every prediction of the experiment in the window (live, shadow, failed), oldest
    first, with its feedback's label and value where there is one."""
    lake = open_lake(lake_uri)
    found = read_table(lake, "predictions", experiment=experiment, since=since, until=until)
    joined = found.join(_labels(lake), "request_id", join_type="left outer")
    return joined.sort_by(
        [("created_at", "ascending"), ("request_id", "ascending"), ("variant", "ascending")]
    )
