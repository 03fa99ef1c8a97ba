# robotok: two commands on a fresh machine.
#   make demo   collect -> train -> evaluate on a small default, end to end
#   make test   the test suite (ruff + pytest)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.robotok-installed

.PHONY: demo test lint bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_venv.sh
	bash scripts/setup_venv.sh $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/pipeline.py

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# env throughput beside panda-gym (the peer is an optional extra, installed here only)
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) scripts/benchmark_env.py

clean:
	rm -rf $(VENV) outputs
