# Two entry points for a fresh machine: `make demo` and `make test`. Each sets itself up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install english-corpus demo test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch==2.13.0 first: it resolves to the local CPU wheel; an open range would pull CUDA builds.
# Extras: test (pytest, ruff, the official packages for parity), plot, rl (simulators), gpu (triton;
# its kernels are tested on CPU under TRITON_INTERPRET=1), train (TensorBoard logs).
install: $(BIN)/python english-corpus
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,plot,rl,gpu,train]'

# The 'english' byte corpus (xlram/data/text.py) is the Linux kernel documentation of Debian 12's
# linux-doc-6.1 package: installed when missing and make runs as root (as CI does), else the command
# is printed. apt-get update only when the package lists do not know it yet.
ENGLISH_DOCS := /usr/share/doc/linux-doc-6.1/Documentation
ENGLISH_APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-doc-6.1

english-corpus:
	@if [ -d $(ENGLISH_DOCS) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing linux-doc-6.1 (the 'english' corpus)"; \
	  $(ENGLISH_APT) >/dev/null 2>&1 || { apt-get update -qq && $(ENGLISH_APT) >/dev/null; } \
	    || echo "warning: linux-doc-6.1 did not install; the 'english' corpus (bench lm) is unavailable"; \
	else echo "note: the 'english' corpus needs: sudo apt-get install -y --no-install-recommends linux-doc-6.1"; fi

demo: install
	$(BIN)/xlram demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
