"""How long the experiment report takes against the number of stored predictions.

For 10^4 to 10^6 stored predictions (10^7 with --max 10000000) on SQLite and PostgreSQL:
rows are generated in the database (two live variants, a shadow on a tenth, three
allocation epochs, split, sticky and forced traffic, labels on half, spread over one day),
the rollup is built the way a migration builds it, and then the report is timed as the
ingress computes it (aggregates, per-variant facts, statistics), against one GROUP BY over
every row (what a report without the rollup would have to do) in the same run.

    python bench/experiment_report.py --output docs/report_scaling.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from raysplit.eventstore.migrations import backfill_rollup, cells_from_rows
from raysplit.eventstore.partitions import add_days, day_of, fill_keys
from raysplit.eventstore.schema import allocations, cells, predictions
from raysplit.eventstore.store import EventStore
from serve_app.report.experiment import build_report

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
DAY_S = 86_400.0
EXPERIMENT = "bench"
SHARES = [{"champion": 0.95, "challenger": 0.05}, {"champion": 0.75, "challenger": 0.25}]
SHARES.append({"champion": 0.5, "challenger": 0.5})

# one generated row per g in 1..N: time spreads over a day, epochs in thirds, a variant
# by the epoch's weight, one in ten sticky (200 users), one in fifty forced
ROWS = """
INSERT INTO raysplit_predictions (request_id, variant, created_at, experiment, model_name,
  model_version, shadow, inputs, predictions, latency_ms, outcome, assignment, allocation,
  unit_hash, predicted, predicted_value)
SELECT 'r' || g,
  CASE WHEN ((g % 100) * 7919) % 100 < (CASE WHEN 3 * g <= {n} THEN 95 WHEN 3 * g <= 2 * {n} THEN 75
       ELSE 50 END) THEN 'champion' ELSE 'challenger' END,
  1.8e9 + g * {day} / {n}, 'bench', 'iris', '1', {false}, '[[5.1, 3.5, 1.4, 0.2]]',
  '["setosa"]', 1.0 + (g % 7) * 0.3, CASE WHEN g % 997 = 0 THEN 'error' ELSE 'ok' END,
  CASE WHEN g % 50 = 0 THEN 'forced' WHEN g % 10 = 0 THEN 'sticky' ELSE 'split' END,
  CASE WHEN 3 * g <= {n} THEN 'k1' WHEN 3 * g <= 2 * {n} THEN 'k2' ELSE 'k3' END,
  CASE WHEN g % 10 = 0 AND g % 50 != 0 THEN 'u' || (g % 200) ELSE NULL END,
  CASE WHEN g % 9 = 0 THEN 'virginica' ELSE 'setosa' END, NULL
FROM {series}
"""
SHADOWS = """
INSERT INTO raysplit_predictions (request_id, variant, created_at, experiment, model_name,
  model_version, shadow, inputs, predictions, latency_ms, outcome, assignment, allocation,
  predicted)
SELECT request_id, 'shadow', created_at, experiment, model_name, '3', {true}, inputs,
  predictions, latency_ms, 'ok', 'shadow', allocation, 'setosa'
FROM raysplit_predictions WHERE assignment != 'forced' AND id % 10 = 0
"""
LABELS = """
INSERT INTO raysplit_feedback (request_id, created_at, label, label_text)
SELECT 'r' || g, 1.8e9 + g * {day} / {n} + 30, '"setosa"', 'setosa' FROM {series} WHERE g % 2 = 0
"""


def _series(dialect: str, n: int) -> str:
    if dialect == "postgresql":
        return f"generate_series(1, {n}) AS s(g)"
    return (
        f"(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n})"
        " SELECT g FROM s)"
    )


def _sql(template: str, dialect: str, n: int) -> str:
    true, false = ("TRUE", "FALSE") if dialect == "postgresql" else ("1", "0")
    return template.format(series=_series(dialect, n), false=false, true=true, day=DAY_S, n=n)


def fresh_store(dialect: str, n: int, workdir: Path) -> EventStore:
    if dialect == "postgresql":
        admin = sa.create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text('DROP DATABASE IF EXISTS "raysplit_bench" WITH (FORCE)'))
            conn.execute(sa.text('CREATE DATABASE "raysplit_bench"'))
        admin.dispose()
        url = f"{POSTGRES}/raysplit_bench"
    else:
        url = f"sqlite:///{workdir / f'events-{n}.db'}"
    store = EventStore(url)
    with store.engine.begin() as conn:
        conn.execute(
            allocations.insert(),
            [
                {"experiment": EXPERIMENT, "key": f"k{i}", "shares": shares, "started_at": i}
                for i, shares in enumerate(SHARES, start=1)
            ],
        )
        if dialect == "postgresql":  # the raw rows' days, as writers make them
            add_days(conn, predictions, [day_of(1.8e9), day_of(1.8e9 + DAY_S)])
        for template in (ROWS, SHADOWS, LABELS):
            conn.execute(sa.text(_sql(template, dialect, n)))
        if dialect == "postgresql":  # writers insert each key with its row
            fill_keys(conn)
        backfill_rollup(conn)  # what a migration does; every write keeps it current after
    if dialect == "postgresql":
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE"))
    return store


def timed(action, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def report(store: EventStore) -> None:
    queries = store.queries(EXPERIMENT, classification=True)
    build_report(queries.aggregates("champion"), queries.variant_facts(), SHARES[-1])


def group_by_rows(store: EventStore) -> None:
    with store.engine.connect() as conn:
        conn.execute(cells_from_rows().where(sa.text("experiment = 'bench'"))).all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/report_scaling.md"))
    parser.add_argument("--max", type=int, default=1_000_000)
    args = parser.parse_args()
    sizes = [n for n in (10_000, 100_000, 1_000_000, 10_000_000) if n <= args.max]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for dialect in ("sqlite", "postgresql"):
            for n in sizes:
                store = fresh_store(dialect, n, Path(tmp))
                with store.engine.connect() as conn:
                    cell_rows = conn.execute(sa.select(sa.func.count()).select_from(cells)).scalar()
                ours = timed(lambda store=store: report(store))
                rows = timed(lambda store=store: group_by_rows(store), repeats=3)
                lines.append(
                    f"| {dialect} | {n:,} | {cell_rows:,} | {ours:.3f} | {rows:.3f} |"
                    f" {rows / ours:.1f}x |"
                )
                print(lines[-1], flush=True)
                store.dispose()
    write(args.output, lines)


def write(output: Path, lines: list[str]) -> None:
    output.write_text(
        "# Experiment report against stored predictions\n\n"
        "Generated by `make bench` (`bench/experiment_report.py`) on this machine. Each row:\n"
        "a fresh database with that many live predictions (plus a shadow copy of a tenth of\n"
        "them, labels on half, three allocation epochs, split, sticky and forced traffic)\n"
        "spread over one day, so the rollup holds about the same number of rows (one per\n"
        "variant, epoch, assignment, model version and minute) whatever the row count.\n"
        "`report` is what the ingress computes for `GET /experiment` (aggregates,\n"
        "per-variant facts, statistics), median of 5; `GROUP BY rows` is one aggregate\n"
        "query over every row, what the report would cost without the rollup, median of 3.\n"
        "Goal: under 1 s at 10^6 on PostgreSQL, growing no faster than the number of\n"
        "buckets.\n\n"
        "| database | predictions | rollup rows | report, s | GROUP BY rows, s | ratio |\n"
        "|---|---:|---:|---:|---:|---:|\n" + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
