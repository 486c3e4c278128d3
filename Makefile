# One command each: `make run` (set up .venv if needed, then serve on http://127.0.0.1:8000)
# and `make test` (set up .venv with the test tools if needed, then run the whole suite).
PYTHON ?= python3
VENV := .venv
PORT ?= 8000

.PHONY: run test lint bench clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	PORT=$(PORT) $(VENV)/bin/gunicorn app:app --config gunicorn.conf.py --bind 127.0.0.1:$(PORT)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -n auto --maxprocesses 4

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
