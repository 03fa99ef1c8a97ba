# robotok: two commands on a fresh machine.
#   make demo   collect -> train -> evaluate on a small default, end to end
#   make test   the test suite (ruff + pytest)
#   make play   watch a checkpoint act in the browser (CHECKPOINT=..., ARGS="dataset=...")
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.robotok-installed

.PHONY: demo test lint bench play venv clean lerobot-venv

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

# the browser playground on http://127.0.0.1:7860 (the page library is the `play` extra)
CHECKPOINT ?= policy/pretrained/rt1_full
play: $(STAMP)
	$(PY) -m pip install --quiet -e ".[play]"
	$(PY) scripts/play.py checkpoint=$(CHECKPOINT) $(ARGS)

# LeRobot's own dataset reader in a venv of its own (scripts/setup_lerobot_venv.sh says why);
# tests/envs/test_lerobot_export.py checks exports with it when it is there
lerobot-venv:
	bash scripts/setup_lerobot_venv.sh .venv-lerobot

clean:
	rm -rf $(VENV) .venv-lerobot outputs
