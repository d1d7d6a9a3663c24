# The README's two commands: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch: a CPU build in the pinned range (the local 2.13.0 wheel here; override TORCH_SPEC elsewhere)
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2

.PHONY: demo test venv bench clean

$(BIN)/ichdet: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/ichdet

venv: $(BIN)/ichdet

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv
	bash scripts/demo.sh

bench: venv
	$(BIN)/python benchmarks/bench_io.py --out benchmarks/results/bench_io.json

clean:
	rm -rf $(VENV) demo-out .pytest_cache
