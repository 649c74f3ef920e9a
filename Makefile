# One-command set-up and entry points. `make bench` and `make test` work on a fresh
# machine: they create .venv, install a CPU torch and the build tools, and build fastseq.
PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.fastseq-installed

.PHONY: install build bench bench-full test test-fast clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is installed first and pinned on its own: the build runs with
# --no-build-isolation so pip never fetches a second (CUDA, multi-GB) torch.
$(STAMP): $(BIN)/python pyproject.toml setup.py
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q setuptools wheel pybind11 ninja
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Incremental rebuild of fastseq._C in place (ninja keeps objects under build/).
build: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

bench: build
	$(BIN)/fastseq bench

# On an idle machine: regenerates every published benchmark (the tables and JSON under
# benchmarks/results/, the plots under docs/img/, README.md's "Measured" table).
bench-full: build
	$(BIN)/python -m fastseq.bench.publish

test: build
	$(BIN)/python -m pytest -q

clean:
	rm -rf build *.egg-info fastseq/_C*.so
