# The two commands of the README: `make demo` (the main job) and `make test`.
# Both set up what they need: OS packages when missing, the virtualenv, the package.

VENV   := .venv
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

DURATION ?=

.PHONY: demo run test lint bench-exporter bench-scaler bench-events bench-policies bench-config system-deps base-deps clean

# What `make test` needs; the demo and the exporter need less (base-deps: no docker-compose,
# no RabbitMQ).
system-deps:
	@scripts/ensure-system-deps.sh test

base-deps:
	@scripts/ensure-system-deps.sh base

$(STAMP): pyproject.toml | base-deps
	@test -x $(VENV)/bin/python || $$(scripts/python.sh) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,demo,sim]'
	@touch $(STAMP)

# The main job: everything on one machine, on free ports, until Ctrl-C or DURATION seconds.
demo: base-deps $(STAMP)
	@$(VENV)/bin/python -m demo.run $(if $(DURATION),--duration $(DURATION)) $(DEMO_ARGS)

run: base-deps $(STAMP)
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

# check-config's wall time on adversarial configs (refused within 1 s) and legit large ones.
bench-config: base-deps $(STAMP)
	$(VENV)/bin/python bench/config_bench.py

# simulate's closed loop for our recommended config and the peers' policies on three
# workloads: bench/results/policies.md and PNGs; fails if ours misses the bar.
bench-policies: base-deps $(STAMP)
	$(VENV)/bin/python bench/policies.py

clean:
	rm -rf $(VENV) .run .pytest_cache .ruff_cache *.egg-info
