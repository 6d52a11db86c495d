# Every target installs what it needs first: a venv with uv, then the locked
# dependencies from uv.lock. Only python3 (3.11+) and make are assumed.
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
VENV := .venv
UV := $(TOOLS)/bin/uv
RUN := $(VENV)/bin

.PHONY: install node-deps run test demo lint typecheck check clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --python $(PYTHON)
	touch $@

install: $(VENV)/.installed

run: install
	$(RUN)/relay dev

# The Node.js signature test needs the standardwebhooks npm package, and the
# TypeScript client example needs typescript. Without npm those tests are
# skipped and say why.
node-deps:
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/node --no-audit --no-fund --silent; \
	else \
		echo "npm not found: the Node.js tests will be skipped"; \
	fi

test: install node-deps
	$(RUN)/pytest

demo: install
	$(RUN)/relay demo

lint: install
	$(RUN)/ruff check .
	$(RUN)/ruff format --check .

typecheck: install
	$(RUN)/mypy

check: lint typecheck test

# Benchmarks: every scenario at full size (under 5 minutes on 2 cores), or
# at a small size that only checks they run (under a minute). See
# docs/performance.md.
.PHONY: bench bench-quick

bench: install
	$(RUN)/python -m bench

bench-quick: install
	$(RUN)/python -m bench --quick

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .hypothesis
