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

LABEL_STUDIO_URL ?= http://127.0.0.1:8089

.PHONY: demo-labelling
demo-labelling: venv  ## the demo with its labelling loop: Label Studio at $(LABEL_STUDIO_URL), its token in $$LABEL_STUDIO_TOKEN (docs/labelling.md)
	$(PY) -m tasks.demo --days $(DAYS) --label-studio "$(LABEL_STUDIO_URL)"$(if $(MODEL), --model "$(MODEL)")

learning-curve: venv  ## rebuild the demo's learning-curve report (PNG, Markdown, CSV, MLflow run) from its runs
	$(PY) -m tasks.demo.learning_curve --config configs/demo.yaml --out $(FRESHET_HOME)/reports

test: venv  ## lint (ruff), types (mypy on tasks/ and plugins/), then the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

lock:  ## re-pin requirements.lock from the current venv (torch stays in requirements-torch.txt)
	$(VENV)/bin/pip freeze --exclude-editable | grep -viE '^(torch|freshet)==' > requirements.lock

# The UIs over any config's stores (CONFIG=, default the demo's; FRESHET_HOME= its home), from anywhere:
# `make -C /path/to/freshet mlflow-ui CONFIG=/abs/my.yaml FRESHET_HOME=/abs/.freshet`, or `freshet ui ...`.
UI_CONFIG = $(abspath $(or $(CONFIG),configs/demo.yaml))

airflow-ui: venv  ## Airflow UI on :8080 over the home's SQLite metadata DB, the training pool created first (Ctrl-C stops)
	$(PY) -m tasks.cli ui airflow --config "$(UI_CONFIG)" --home "$(FRESHET_HOME)"

mlflow-ui: venv  ## MLflow UI on :5000 over the config's tracking URI (a relative sqlite path: the config's directory)
	$(PY) -m tasks.cli ui mlflow --config "$(UI_CONFIG)" --home "$(FRESHET_HOME)"

SERVE_PORT ?= 8000

serve: venv  ## serve the demo's champion on 127.0.0.1:$(SERVE_PORT), following the alias (docs/serving.md; Ctrl-C stops)
	$(PY) -m tasks.serve --config configs/demo.yaml --port $(SERVE_PORT)

clean:
	rm -rf $(FRESHET_HOME)
