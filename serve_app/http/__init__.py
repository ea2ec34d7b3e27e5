"""The ingress's HTTP face: the FastAPI app (:mod:`.api`), its guard (keys, cross-site
rules, limits), request and response schemas, the Open Inference Protocol codec, the
routes (:mod:`.routes`) and the results page's static files. Translates HTTP to the
replica's parts and back; holds no serving logic of its own."""
