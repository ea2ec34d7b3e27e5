# raysplit: `make demo` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Debian packages each target needs, as PACKAGE:COMMANDS: installed when missing by
# .ci/system-deps (apt-get as root or through sudo; otherwise make stops naming them).
SYSTEM_DEPS = PYTHON=$(PYTHON) bash .ci/system-deps
INSTALL_PACKAGES := python3-venv
# the observability tests run a real Prometheus and promtool (both in Debian's prometheus);
# the results page's tests drive Debian's Chromium through Playwright (tests/browser)
TEST_PACKAGES := prometheus:prometheus,promtool chromium:chromium
DEMO_PACKAGES :=
BENCH_PACKAGES := prometheus:prometheus,promtool wrk:wrk

.PHONY: bench-events install demo test lint format bench bench-train bench-overload bench-soak bench-profile \
	bench-refused-deploy clean \
	system-deps-test system-deps-demo system-deps-bench

install: $(INSTALLED)

# one check for every package the target needs, before anything slow starts
system-deps-test:
	@$(SYSTEM_DEPS) $(INSTALL_PACKAGES) $(TEST_PACKAGES)

system-deps-demo:
	@$(SYSTEM_DEPS) $(INSTALL_PACKAGES) $(DEMO_PACKAGES)

system-deps-bench:
	@$(SYSTEM_DEPS) $(INSTALL_PACKAGES) $(BENCH_PACKAGES)

# uv rather than pip: the same packages in 48 s instead of 106 s on a fresh clone (2 cores,
# warm caches). --compile-bytecode because a Python run with PYTHONDONTWRITEBYTECODE set
# (this CI machine) never writes .pyc files itself, and every import then compiles from
# source: twice the start-up time of each Ray worker and test process.
$(INSTALLED): pyproject.toml
	@$(SYSTEM_DEPS) $(INSTALL_PACKAGES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv>=0.5,<1'
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -e '.[dev]'
	touch $(INSTALLED)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# One pytest run on every core: the tests that use a Ray cluster are two halves, each on one
# worker and that worker's own cluster (tests/conftest.py groups them); the unit tests and
# the modules that need no cluster fill in behind whichever half ends first.
test: system-deps-test lint
	$(BIN)/pytest -n auto

DASHBOARD ?= http://127.0.0.1:8265

# Two searches on iris (a broad one becomes the champion, a k-NN-only one the challenger) and
# two on diabetes (ridge the champion, a random forest the challenger), a local Ray head,
# serve_config.yaml (iris at /, diabetes at /diabetes) deployed with Ray's own CLI, sample
# traffic to each, each one's report; then serve_config_rollout.yaml: an automatic rollout
# of the iris challenger to a decision.
demo: system-deps-demo install
	$(BIN)/raysplit tune --config tune/configs/iris.yaml --alias champion
	$(BIN)/raysplit tune --config tune/configs/iris.yaml --families knn --num-samples 8 --alias challenger
	$(BIN)/raysplit tune --config tune/configs/diabetes.yaml --families ridge --num-samples 6 --alias champion
	$(BIN)/raysplit tune --config tune/configs/diabetes.yaml --families random_forest --num-samples 4 --alias challenger
	$(BIN)/raysplit down
	$(BIN)/raysplit up
	RAY_AUTH_MODE=token $(BIN)/serve deploy serve_config.yaml -a $(DASHBOARD)
	$(BIN)/raysplit traffic --requests 300 --users 50 --feedback
	$(BIN)/raysplit traffic --app diabetes --requests 300 --users 50 --feedback
	@sleep 2  # feedback is written off the request path
	$(BIN)/raysplit report
	@echo
	$(BIN)/raysplit report --app diabetes
	@echo
	@echo "A rollout: the controller moves the challenger through 10% and 50% of live traffic,"
	@echo "gated by the experiment's statistics on labelled requests (docs/rollouts.md)"
	RAY_AUTH_MODE=token $(BIN)/serve deploy serve_config_rollout.yaml -a $(DASHBOARD)
	$(BIN)/raysplit traffic --until-rollout-ends --requests 200 --users 50 --timeout 600
	$(BIN)/raysplit rollout status
	@echo
	@$(BIN)/raysplit info
	@echo
	@echo "Predictions: curl -X POST http://127.0.0.1:8000/predict -H 'X-User-Id: alice' --json '{\"sepal_length\": 5.1, \"sepal_width\": 3.5, \"petal_length\": 1.4, \"petal_width\": 0.2}'"
	@echo "Variants:    curl http://127.0.0.1:8000/models    API docs: http://127.0.0.1:8000/docs"
	@echo "Results page (in a browser): http://127.0.0.1:8000/ui    diabetes: http://127.0.0.1:8000/diabetes/ui"
	@echo "Diabetes:    curl -X POST http://127.0.0.1:8000/diabetes/predict --json '{\"instances\": [[0.04, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, 0.0, 0.02, -0.02]]}'"
	@echo "             raysplit report --app diabetes    API docs: http://127.0.0.1:8000/diabetes/docs"
	@echo "Ray dashboard: $(DASHBOARD)   Serve status: RAY_AUTH_MODE=token $(BIN)/serve status -a $(DASHBOARD)"
	@echo "MLflow UI: $(BIN)/mlflow ui --backend-store-uri $$($(BIN)/python -c 'from raysplit.core.settings import Locations; print(Locations.resolve().mlflow_tracking_uri)') --port 5000"
	@echo "The cluster keeps running; stop it with: $(BIN)/raysplit down"

# raysplit against a FastAPI baseline and the textbook Serve composition under wrk, memory,
# autoscaling -> docs/benchmarks.md (+ PNGs); the training side -> docs/training_speed.md; the
# experiment report against stored predictions -> docs/report_scaling.md; overload (256
# connections, queue capped or not) -> docs/overload.png. The hour-long soak is its own target,
# `make bench-soak`: an hour would more than double `make bench`.
bench: system-deps-bench install
	$(BIN)/python bench/serving.py --output docs/benchmarks.md
	$(BIN)/python bench/training_speed.py --output docs/training_speed.md
	$(BIN)/python bench/experiment_report.py --output docs/report_scaling.md
	$(BIN)/python bench/overload.py --plot docs/overload.png
	$(BIN)/python bench/refused_deploy.py --output docs/refused_deploy.md
	$(BIN)/python bench/events.py --out docs/events.md

# Event-store ingest: 1, 2, 4 writer processes on PostgreSQL and SQLite -> docs/events.md
bench-events: install
	$(BIN)/python bench/events.py --out docs/events.md

# A refused deploy at one replica under a request every 50 ms -> docs/refused_deploy.md
bench-refused-deploy: install
	$(BIN)/python bench/refused_deploy.py --output docs/refused_deploy.md

# Above capacity: 503s with Retry-After past max_queued_requests, accepted p99, nothing lost
bench-overload: system-deps-bench install
	$(BIN)/python bench/overload.py --plot docs/overload.png

# An hour of sticky traffic with feedback and a reconfigure every 10 minutes: RSS per
# replica, event queues and p99 over time -> docs/soak.png (a 3-minute try-out: see the
# docstring of bench/soak.py)
bench-soak: install
	$(BIN)/python bench/soak.py --plot docs/soak.png

# Where one ingress replica's CPU goes on the single-row path (py-spy) -> docs/profile.md
bench-profile: system-deps-bench install
	$(BIN)/python bench/profile_replica.py --output docs/profile.md

# Best scores and wall time of the default search on each bundled dataset -> docs/training.md
bench-train: install
	$(BIN)/python bench/train_quality.py --output docs/training.md

clean:
	rm -rf $(VENV) .raysplit .pytest_cache .ruff_cache
