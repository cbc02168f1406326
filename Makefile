PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"

demo:
	$(BIN)/humove demo --run-dir runs/demo

test:
	HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 $(BIN)/python -m pytest tests

lint:
	$(BIN)/ruff check .

bench:
	$(BIN)/python -m bench

clean:
	rm -rf runs build *.egg-info
