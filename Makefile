# raysplit: `make demo` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install demo test lint format bench-train clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest

# Two searches on iris: a broad one becomes the champion, a k-NN-only one the challenger.
demo: install
	$(BIN)/raysplit tune --config tune/configs/iris.yaml --alias champion
	$(BIN)/raysplit tune --config tune/configs/iris.yaml --families knn --num-samples 8 --alias challenger
	@echo
	@echo "Resolved locations (raysplit info):"
	@$(BIN)/raysplit info
	@echo
	@echo "MLflow UI: $(BIN)/mlflow ui --backend-store-uri $$($(BIN)/python -c 'from raysplit.settings import Locations; print(Locations.resolve().mlflow_tracking_uri)') --port 5000"

# Best scores and wall time of the default search on each bundled dataset -> docs/training.md
bench-train: install
	$(BIN)/python bench/train_quality.py --output docs/training.md

clean:
	rm -rf $(VENV) .raysplit .pytest_cache .ruff_cache
