# Two commands set a fresh machine up: `make demo` and `make test`. Both create the venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DAYS ?= 2
export FRESHET_HOME ?= $(CURDIR)/.freshet

.PHONY: venv demo learning-curve test lock airflow-ui mlflow-ui serve clean

$(VENV)/.installed: requirements-torch.txt requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q pip==26.3
	# torch first, alone: the CPU wheel, so nothing pulls a multi-GB CUDA build.
	$(VENV)/bin/pip install -q -r requirements-torch.txt
	$(VENV)/bin/pip install -q -r requirements.lock
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

demo: venv  ## the whole pipeline for $(DAYS) consecutive days on the embedded default (MODEL=DIR: on that encoder)
	$(PY) -m tasks.demo --days $(DAYS)$(if $(MODEL), --model "$(MODEL)")$(if $(CONFIG), --config "$(CONFIG)")

learning-curve: venv  ## rebuild the demo's learning-curve report (PNG, Markdown, CSV, MLflow run) from its runs
	$(PY) -m tasks.demo.learning_curve --config configs/demo.yaml --out $(FRESHET_HOME)/reports

test: venv  ## lint (ruff), types (mypy on tasks/ and plugins/), then the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

lock:  ## re-pin requirements.lock from the current venv (torch stays in requirements-torch.txt)
	$(VENV)/bin/pip freeze --exclude-editable | grep -viE '^(torch|freshet)==' > requirements.lock

AIRFLOW_ENV = PATH=$(abspath $(VENV))/bin:$$PATH AIRFLOW_HOME=$(FRESHET_HOME)/airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__PARALLELISM=4 FRESHET_CONFIG=$(CURDIR)/configs/demo.yaml

airflow-ui: venv  ## Airflow UI on :8080 over the demo's SQLite metadata DB (stop with Ctrl-C)
	# The training pool first: the scheduler leaves tasks of a missing pool queued forever.
	$(AIRFLOW_ENV) $(VENV)/bin/airflow db migrate >/dev/null
	$(AIRFLOW_ENV) $(VENV)/bin/airflow pools set freshet_training 1 "freshet: training jobs (one GPU job at a time)" >/dev/null
	$(AIRFLOW_ENV) $(VENV)/bin/airflow standalone

mlflow-ui: venv  ## MLflow UI on :5000 over the demo's tracking DB and artifacts
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(FRESHET_HOME)/mlflow.db \
	  --default-artifact-root $(FRESHET_HOME)/mlartifacts --host 127.0.0.1 --port 5000

SERVE_PORT ?= 8000

serve: venv  ## serve the demo's champion on 127.0.0.1:$(SERVE_PORT), following the alias (docs/serving.md; Ctrl-C stops)
	$(PY) -m tasks.serve --config configs/demo.yaml --port $(SERVE_PORT)

clean:
	rm -rf $(FRESHET_HOME)
