# The README's two commands: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch: a CPU build in the pinned range (the local 2.13.0 wheel here; override TORCH_SPEC elsewhere)
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2

# The tests whose outcome depends on the CPU's arithmetic, run again as on a CPU with AVX2 and nothing
# more (PyTorch's and oneDNN's ISA overrides): what most users' laptops and cloud VMs do.
AVX2_ENV := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
AVX2_TESTS ?= tests/engine/test_precision.py tests/engine/test_train.py tests/inference/test_predictor.py \
	tests/inference/test_export.py tests/inference/test_subtype_outputs.py tests/inference/test_batch.py \
	tests/test_bench_train.py tests/test_bench_infer.py

.PHONY: demo test test-avx2 venv browser bench clean

$(BIN)/ichdet: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/ichdet

venv: $(BIN)/ichdet

# The viewer's browser test drives Debian's chromium through Playwright (no browser download):
# install it when missing and apt-get can (root on Debian); elsewhere the test skips with the
# reason, unless ICHDET_REQUIRE_BROWSER=1 (CI) makes a missing browser a failure.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing Debian's chromium for the viewer's browser test"; \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	    else echo "chromium not found and not installable here: the browser test will be skipped"; fi; }

test: venv browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-avx2: venv
	$(AVX2_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS) $(AVX2_TESTS)

demo: venv
	bash scripts/demo.sh

bench: venv
	$(BIN)/python benchmarks/bench_io.py --out benchmarks/results/bench_io.json

clean:
	rm -rf $(VENV) demo-out .pytest_cache
