# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export MLFLOW_MODEL_CATALOG_URI :=
export NO_PROXY := 127.0.0.1,localhost
export no_proxy := 127.0.0.1,localhost

.PHONY: venv demo test test-slow test-compat bench lint fmt clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# MLflow 3.18: pip cannot resolve mlflow 3.18.0 (it pins mlflow-tracing==3.18.0, which is
# not on PyPI), so its wheels go over the dev install without resolution; then the tests
# that touch MLflow's schema and export path run on it.
COMPAT_VENV := .venv-mlflow318
COMPAT_STAMP := $(COMPAT_VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
COMPAT_TESTS := tests/analytics/test_views_export.py tests/analytics/test_queries.py tests/tracing \
	tests/pricing/test_reprice.py tests/foundation/test_mlflow_server.py

$(COMPAT_STAMP): pyproject.toml
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q --upgrade pip
	$(COMPAT_VENV)/bin/python -m pip install -q -e '.[dev]'
	$(COMPAT_VENV)/bin/python -m pip install -q --no-deps mlflow==3.18.0 mlflow-skinny==3.18.0 \
		'python-multipart>=0.0.18'
	$(COMPAT_VENV)/bin/python -c "import mlflow; assert mlflow.__version__ == '3.18.0', mlflow.__version__"
	rm -f $(COMPAT_VENV)/.installed-* && touch $(COMPAT_STAMP)

test-compat: $(COMPAT_STAMP)
	$(COMPAT_VENV)/bin/python -m pytest -q -n 2 --dist loadgroup $(COMPAT_TESTS) \
		--deselect tests/tracing/test_service_install.py

# Benchmarks run in their own venv: the bench extra (litellm, a baseline) pins other
# versions of openai and changes MLflow's own cost path, so it stays out of .venv.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export LITELLM_LOCAL_MODEL_COST_MAP := True

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[dev,bench]'
	rm -f $(BENCH_VENV)/.installed-* && touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(COMPAT_VENV) .mlflow-llmops demo-output bench-output mlruns mlflow.db
