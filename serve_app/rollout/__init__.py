"""Rollouts: the decision rule (:mod:`.rule`, pure), the record and its transitions
(:mod:`.state`, pure), what the rule reads (:mod:`.inputs`), the registry's alias moves
(:mod:`.registry`) and the typed store of records (:mod:`.store`). The loop that runs them
in a replica is :mod:`serve_app.replica.rollout_loops`."""
