# caviar: the two commands of the README's quick start are `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch that this project's machines carry on disk; elsewhere the range in
# pyproject.toml applies (install your CUDA build of torch into $(VENV) first to keep it).
TORCH_LOCAL ?= torch==2.13.0

.PHONY: install demo test test-cluster test-bench test-fast test-no-speedups lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_LOCAL)" || \
		echo "caviar: $(TORCH_LOCAL) not available here; pip will pick torch from pyproject.toml's range"
	$(PIP) install --quiet -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/caviar run examples/digits.yaml

# Everything but the multi-process clusters (make test-cluster) and the benchmark harness's
# smoke tests (make test-bench); CI runs all three.
test: install
	$(VENV)/bin/lint-imports   # the boundaries of docs/design.md ([tool.importlinter])
	$(PY) -m pytest -m "not bench and not cluster"

# The clusters: a Ray head and worker as local processes with an MLflow server on PostgreSQL,
# caviar up, a cluster built with plain ray start, submit and resume.
test-cluster: install
	$(PY) -m pytest -m cluster

# The benchmark harness (bench/) at smoke size: every system and arm runs, numbers are sane.
test-bench: install
	$(PY) -m pytest -m bench

# The fast part while you work: no Ray or MLflow processes (a few minutes).
test-fast: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not integration and not cluster and not bench"

# The integration sweeps with every speed-up that uses a library's internals off (CI runs it):
# the pinned one, and a packed one (its stops then travel through the actor mailbox).
test-no-speedups: install
	CAVIAR_NO_SPEEDUPS=1 $(PY) -m pytest tests/integration/test_local_sweep.py \
		tests/integration/test_packed_sweep.py

lint: install
	$(VENV)/bin/ruff check orchestrator trainables tests

clean:
	rm -rf $(VENV) caviar_runs mlflow.db mlruns mlartifacts .pytest_cache
