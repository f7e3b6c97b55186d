# Set-up is idempotent: .venv is built once and reused; it is rebuilt only when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the release this machine serves from local disk (see README)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

# The main job on the embedded default: a real search (10 trials) on the synthetic data,
# exporting the best config to best.yaml.
demo: $(STAMP)
	$(BIN)/python run_search.py --space search_spaces/demo.yaml --export best.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The same without the tests marked slow (they train or start Ray): a few minutes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf outputs .pytest_cache .ruff_cache .mypy_cache
