# stabletrain — two commands: `make lab` and `make test`.
# Both create .venv if it is missing and install the course environment into it.

PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
CONSTRAINTS := requirements/constraints.txt
STAMP       := $(VENV)/.stabletrain-installed
TORCH_VERSION := $(shell sed -n 's/^torch==//p' $(CONSTRAINTS))
# A CPU build of torch where one is available (see README for GPU builds).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Two notebooks (or test workers) side by side on two cores: one BLAS thread each.
THREADS_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
WORKERS     ?= 2
NBVAL_OPTS  := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=300
LINT_PATHS  := lib tests notebooks benchmarks tools

.PHONY: lab test test-browser test-portable install lint format unit notebooks execute-notebooks mlflow clean

# Extra JupyterLab flags, e.g. make lab LAB_ARGS="--no-browser --port 8899"
LAB_ARGS ?=
# Jupyter refuses to run as root unless told; containers often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(STAMP)
	@# trusted notebooks render their stored widgets (untrusted ones show text)
	$(VENV)/bin/jupyter trust notebooks/*.ipynb >/dev/null
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG) $(LAB_ARGS)

test: $(STAMP) lint
	$(THREADS_ENV) $(PY) -m pytest -n $(WORKERS) --dist loadfile $(NBVAL_OPTS) tests notebooks --ignore=tests/browser

# The course in a real browser: JupyterLab on 127.0.0.1 and Debian's Chromium driven by
# Playwright (never `playwright install`: it downloads a browser). apt-get install chromium first.
test-browser: $(STAMP)
	@$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install --quiet "playwright>=1.40"
	$(THREADS_ENV) $(PY) -m pytest -p no:cacheprovider tests/browser

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	@# torch first: a local CPU wheel if pip already knows one, else the CPU index, else PyPI.
	$(PY) -m pip install --quiet --no-index "torch==$(TORCH_VERSION)" 2>/dev/null \
	  || $(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX) \
	  || $(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[course]"
	$(PY) -m ipykernel install --sys-prefix --name stabletrain --display-name "Python (stabletrain)" >/dev/null
	@touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

unit: $(STAMP)
	$(THREADS_ENV) $(PY) -m pytest -n $(WORKERS) tests --ignore=tests/browser

notebooks: $(STAMP)
	$(THREADS_ENV) $(PY) -m pytest -n $(WORKERS) --dist loadfile $(NBVAL_OPTS) notebooks

# The stored outputs come from one CPU's kernels; a learner's CPU picks others. Validate the
# notebooks under foreign kernel choices too (torch picks its CPU kernels by instruction set):
# make test-portable [NB=notebooks/02_lr_range_test.ipynb] [KERNELS="..."]
KERNELS ?= default:SSE41 avx2:AVX2
NB_TEST ?= $(if $(filter notebooks/*.ipynb,$(NB)),notebooks,$(NB))
test-portable: $(STAMP)
	@set -e; for k in $(KERNELS); do \
	  aten=$${k%%:*}; isa=$${k##*:}; \
	  echo "== notebooks under ATEN_CPU_CAPABILITY=$$aten ONEDNN_MAX_CPU_ISA=$$isa"; \
	  ATEN_CPU_CAPABILITY=$$aten ONEDNN_MAX_CPU_ISA=$$isa $(THREADS_ENV) \
	    $(PY) -m pytest -n $(WORKERS) --dist loadfile $(NBVAL_OPTS) $(NB_TEST); \
	done

# Re-execute notebooks in place in a fresh kernel (after editing them): make execute-notebooks NB=notebooks/00_quickstart.ipynb
NB ?= notebooks/*.ipynb
execute-notebooks: $(STAMP)
	$(THREADS_ENV) $(PY) tools/execute_notebooks.py $(NB)

mlflow: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" --default-artifact-root "$(CURDIR)/mlartifacts"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache lib/*.egg-info
