# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-unit demo data model bench lint clean

setup:
	@bash launch/setup.sh

data: setup
	$(PY) -m commerce build --out data

model: setup
	$(PY) -m zoo build --shape tiny --out models/tiny --db data/commerce.db

# Everything that runs without a GPU (CI runs exactly this).
test: setup
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit -m "not gpu and not slow" $(PYTEST_ARGS)

demo: setup
	bash launch/demo.sh

bench: setup
	$(PY) -m sync.bench --json runs/bench/sync.json
	$(PY) -m actor.bench --json runs/bench/actor.json
	$(PY) -m learner.bench --json runs/bench/learner.json
	$(PY) -m rewards.bench --json runs/bench/rewards.json

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs/demo runs/compare models data .pytest_cache
