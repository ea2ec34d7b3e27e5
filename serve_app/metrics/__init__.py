"""Ray Serve metrics for Prometheus: the counters the request path tallied and the report's
figures, published by one replica per experiment (:mod:`.experiment`)."""
