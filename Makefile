# Two commands matter on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the build that ships on our CI image; any torch >= 2.1 works (see pyproject.toml).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-all lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Offline end to end: a standard and an adversarially trained model on mnist5k.
demo: install
	$(BIN)/python -m robustcnn.train --dataset mnist5k --out runs/demo-std --overwrite
	$(BIN)/python -m robustcnn.train --dataset mnist5k --adv --out runs/demo-adv --overwrite

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-all: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff format --check robustcnn tests benchmarks
	$(BIN)/ruff check robustcnn tests benchmarks

clean:
	rm -rf runs reports/*/ .pytest_cache
