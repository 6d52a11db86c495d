# Every target installs what it needs first: a venv with uv, then the locked
# dependencies from uv.lock. Only python3 (3.11+) and make are assumed.
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
VENV := .venv
UV := $(TOOLS)/bin/uv
RUN := $(VENV)/bin

.PHONY: install run test demo lint typecheck check clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --python $(PYTHON)
	touch $@

install: $(VENV)/.installed

run: install
	$(RUN)/relay dev

test: install
	$(RUN)/pytest

demo: install
	$(RUN)/relay demo

lint: install
	$(RUN)/ruff check .
	$(RUN)/ruff format --check .

typecheck: install
	$(RUN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
