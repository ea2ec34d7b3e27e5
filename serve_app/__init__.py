"""The serving side: a Ray Serve ingress (:mod:`serve_app.app`, the Ray edge) over
sub-packages that each import only those below them: config < stats < report < rollout <
events < predict < metrics < replica < http. See docs/architecture.md."""
