"""The event store: the one owner of raysplit's database, used by serving and training.

Its tables and migrations (:mod:`.schema`, :mod:`.migrations`), the batched event writes
and the counts they keep current (:mod:`.store`, :mod:`.rollup`), the report's reads
(:mod:`.queries`, shaped as :mod:`.aggregates`), rollouts, accepted configs, key use and
leases, and the labelled rows a retrain reads (:mod:`.labelled`). Nobody outside this
package holds its engine or declares its tables: SQLite and PostgreSQL differ in locks,
upserts and timeouts, and those differences stay here.

Imports only the foundation (:mod:`raysplit.core`).
"""
