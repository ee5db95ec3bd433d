# zoo: every target creates or reuses .venv itself, so each works on a fresh machine.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint notebooks clean

install: $(STAMP)

# torch/torchvision are pinned first (both wheels lie on the local disk), then the package and its dev extra.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m zoo.models.codet5.demo

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python bench/overhead.py --out bench/results/overhead.json

lint: install
	$(BIN)/ruff check zoo tests bench

notebooks: install
	$(BIN)/python -m pytest -q tests/test_notebooks.py

clean:
	rm -rf $(VENV) .pytest_cache runs out lightning_logs
