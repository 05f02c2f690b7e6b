# The README's two set-up commands. torch is installed first and pinned: with no torch present, a
# bare requirement pulls the CUDA build (several GB); torch==2.13.0 is the CPU wheel here.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
TORCH ?= torch==2.13.0

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"

quickstart: install
	HF_HUB_OFFLINE=1 $(BIN)/python cli.py search --config search_spaces/quickstart.yaml

quickstart-sst2: install
	HF_HUB_OFFLINE=1 $(BIN)/python cli.py search --config search_spaces/sst2_quickstart.yaml

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -v -rs --durations=15

# The edit-test loop: the unit tier only (no Ray, no MLflow server, no cluster), under 2 minutes, in
# 2 processes (pytest-xdist). The integration tests stay in one: each uses the whole machine.
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -rs -m "not integration" -n 2 --durations=5

.PHONY: install quickstart quickstart-sst2 test test-fast
