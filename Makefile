# make demo  - create .venv if needed, install, run the whole demo (`ldm quickstart`)
# make test  - create .venv if needed, install with the dev/t2i extras (+ Debian chromium), run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint app chromium clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-main: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev,t2i]"
	touch $(VENV)/.installed-main $@

demo: $(VENV)/.installed-main
	$(BIN)/ldm quickstart

app: $(VENV)/.installed-main
	$(BIN)/python app.py

# Browser tests use Debian's chromium (never a browser download); installed here when missing and we are root.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: $(VENV)/.installed-dev chromium
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check ldm tests scripts app.py
	$(BIN)/ruff format --check ldm tests scripts app.py

clean-venv:
	rm -rf $(VENV)
