# Two commands for a newcomer: `make run` and `make test`. Everything else is installed here.
PYTHON ?= python3
VENV ?= .venv
DATA ?= $(or $(TESSERA_DATA_DIR),.tessera)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-deps bench lint clean

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	@echo "installing Tessera into $(VENV) ..."
	@$(BIN)/pip install -q -e ".[dev,hsm]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import tessera" && touch $(STAMP)

run: $(STAMP)
	@test -f $(DATA)/tessera.db || $(BIN)/tessera init --data-dir $(DATA)
	@echo "CLI: source $(VENV)/bin/activate (then: tessera --help)"
	@$(BIN)/tessera serve --data-dir $(DATA)

test-deps:
	@bash scripts/install-test-deps.sh

test: $(STAMP) test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/token_issuance.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
