# Two entry points for a fresh machine: `make demo` and `make test`. Each sets itself up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch==2.13.0 first: it resolves to the local CPU wheel; an open range would pull CUDA builds.
# Extras: test (pytest, ruff, the official packages for parity), plot, rl (simulators), gpu (triton;
# its kernels are tested on CPU under TRITON_INTERPRET=1), train (TensorBoard logs).
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,plot,rl,gpu,train]'

demo: install
	$(BIN)/xlram demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
