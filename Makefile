# The two commands of the README: `make run` (the main job) and `make test`.
# Both set up what they need: OS packages when missing, the virtualenv, the package.

VENV   := .venv
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint bench-exporter bench-scaler bench-events system-deps clean

system-deps:
	@scripts/ensure-system-deps.sh

$(STAMP): pyproject.toml | system-deps
	@test -x $(VENV)/bin/python || $$(scripts/python.sh) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: system-deps $(STAMP)
	@scripts/run-exporter.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: system-deps $(STAMP) lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench-exporter: system-deps $(STAMP)
	$(VENV)/bin/python bench/exporter_bench.py

bench-events: system-deps $(STAMP)
	$(VENV)/bin/python bench/events_bench.py

bench-scaler: system-deps $(STAMP)
	$(VENV)/bin/python bench/scaler_bench.py --layout grouped
	$(VENV)/bin/python bench/scaler_bench.py --layout per-service

clean:
	rm -rf $(VENV) .run .pytest_cache .ruff_cache *.egg-info
