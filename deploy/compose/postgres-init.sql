-- The event store's database, beside MLflow's (POSTGRES_DB) on the same server.
CREATE DATABASE events OWNER raysplit;
