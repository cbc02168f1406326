PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.humove-installed

.PHONY: setup demo test lint bench clean lock gpu-env-check gpu-check

# One command each on a fresh machine: `make demo` and `make test` install first when needed.
setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q "pip==26.3"
	$(BIN)/pip install -q -c constraints/cpu.txt -e ".[dev]"
	$(BIN)/python -m humove.environment --fix
	touch $@

demo: $(STAMP)
	$(BIN)/humove demo --run-dir runs/demo

# Two pytest workers: alone the suite keeps 2 cores ~68% busy (subprocesses, Ray and torchrun start-ups); each
# worker takes a whole test file at a time, so a file's module fixtures (the demo build) run once.
test: $(STAMP)
	HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadfile tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m bench

# Re-pin the CPU environment after changing dependencies: exact versions of everything installed.
lock: $(STAMP)
	{ echo "# Exact versions of the CPU/offline environment (make setup). Regenerate with make lock."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^humove'; \
	  echo "opencv-python==4.11.0.86"; echo "opencv-contrib-python==4.11.0.86"; } > constraints/cpu.txt

# Resolver dry run of a GPU node's environment (.[gpu]: vLLM + every real backend, no mediapipe), no install.
gpu-env-check: $(STAMP)
	$(BIN)/python -m humove.environment --resolve-gpu

# The production path on a lent GPU, one table (README, Performance). Run it in the GPU node's `.[gpu]` environment
# installed as .venv; without a GPU it is a dry run at tiny sizes on the CPU. Installs the CPU set-up only when there
# is no .venv at all.
gpu-check: $(if $(wildcard $(BIN)/python),,$(STAMP))
	HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 $(BIN)/python -m bench.gpu_check

clean:
	rm -rf runs build *.egg-info
