"""Answering a prediction: models loaded and verified (:mod:`.models`), a config's variants
validated and loaded before they serve (:mod:`.prepare`), routing, batching, the serving
state a replica holds and the predictor that ties them together."""
