# Everything runs inside .venv, created on first use. On a machine without torch the CPU wheel
# is installed first (TORCH_SPEC); a bare `torch` requirement would pull a multi-GB CUDA build.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LMTRAIN_DATA ?= $(abspath ../shared/data)
export LMTRAIN_DATA

.PHONY: install demo test test-fast lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

## demo: train the quickstart model on built-in text, evaluate it, print a sample
demo: install
	rm -rf runs/quickstart
	$(VENV)/bin/lmtrain fit configs/quickstart.yaml run.dir=runs/quickstart
	$(VENV)/bin/lmtrain eval runs/quickstart
	$(VENV)/bin/lmtrain sample runs/quickstart --prompt "The " --max-tokens 300 --temperature 0.8 --seed 0

## test: the whole suite on CPU (a few minutes)
test: install
	$(PY) -m pytest -q

## test-fast: the suite without the tests marked slow, one process per core (about a minute
## on 2 cores); a file's tests stay in one process, so a module's fixture is built once
test-fast: install
	$(PY) -m pytest -q -m "not slow" -n auto --dist loadfile

lint: install
	$(VENV)/bin/ruff check lmtrain tests scripts
	$(VENV)/bin/ruff format --check lmtrain tests scripts

format: install
	$(VENV)/bin/ruff format lmtrain tests scripts
	$(VENV)/bin/ruff check --fix lmtrain tests scripts

## bench: throughput benchmarks; prints ratios against baselines measured in the same run
bench: install
	$(PY) scripts/bench_train.py
	$(PY) scripts/bench_adaptive.py
	$(PY) scripts/bench_gpu.py
	$(PY) scripts/bench_reliability.py
	$(PY) scripts/bench_sentences.py
	$(PY) scripts/bench_cells.py
	$(PY) scripts/bench_output.py
	$(PY) scripts/bench_data.py

## bench-quality: time for the WikiText-2 CPU recipe to reach the classic loop's one-epoch
## validation perplexity (scripts/classic_epoch.json), against that epoch's time; ~5 minutes
.PHONY: bench-quality
bench-quality: install
	$(PY) scripts/bench_quality.py

## bench-bf16: the CPU recipes in fp32 and bf16 for the same steps (validation loss, tokens/s);
## says so and skips where bf16 cannot run (scripts/gpu_check.sh runs it on a GPU)
.PHONY: bench-bf16
bench-bf16: install
	$(PY) scripts/bench_bf16.py

## bench-transfer: the WikiText-2 CPU recipe on three other corpora against settings tuned for
## each (about an hour: 9 runs of 10 minutes, 2 at once)
.PHONY: bench-transfer
bench-transfer: install
	$(PY) scripts/bench_transfer.py

## reproduce-quick: rerun the CPU recipes on a short budget; exit 1 on a quality regression
.PHONY: reproduce-quick
reproduce-quick: install
	$(PY) scripts/reproduce.py

## docs: the manual (docs/, mkdocs.yml) as a site in site/, built with --strict: a broken link or
## anchor, a page missing from the navigation or an unreadable docstring fails the build
DOCS_STAMP := $(VENV)/.docs-installed
.PHONY: docs docs-check
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

## docs-check: the built site's home page and one task page rendered by headless Chromium: the
## screenshots are not blank and the DOM holds each page's title (needs `chromium` on PATH)
docs-check: docs
	LMTRAIN_DOCS_CHECK=1 $(PY) -m pytest -q -rs tests/test_docs.py -k chromium

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
