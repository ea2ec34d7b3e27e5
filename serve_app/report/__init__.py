"""The experiment report and its timeline, built from the event store's aggregates by the
statistics in :mod:`serve_app.stats`. Pure: the reads are the event store's."""
