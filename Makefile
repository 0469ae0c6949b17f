# Two commands matter on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the build on our CI image (pip takes it from local disk there); any torch >= 2.1 works.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install browser demo certified smoothing test test-all lint bench gpu-check clean

install: $(VENV)/.installed

# torchattacks, the benchmarks' comparison loop, pins requests~=2.25.1 (which it never imports) and MLflow's client
# needs requests>=2.28, so no resolver installs both: it comes last, without its dependencies (all in .[dev]).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps 'torchattacks>=3.5'
	touch $@

# Headless Chromium for the report's browser test (Debian's package; Playwright drives it, and
# `playwright install` is never run: it would download a browser from a CDN). Needs root; skipped otherwise.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "make browser: install Debian's chromium to run the browser test"

# Offline, end to end, about 4 minutes on 2 CPU cores: a standard and a PGD-trained smallcnn on
# mnist5k, the quick suite against both, and the report.
demo: install
	$(BIN)/python -m robustcnn.train --dataset mnist5k --out runs/demo-std --overwrite
	$(BIN)/python -m robustcnn.train --dataset mnist5k --adv --out runs/demo-adv --overwrite
	$(BIN)/python -m robustcnn.sweep runs/demo-std runs/demo-adv --suite quick --out reports/demo

# Certified lower bounds beside the attacks (README "Certified lower bounds"): a certifiably trained ibpcnn
# and the PGD-trained demo model (trained first if `make demo` has not run), the certified suite, the bracket.
certified: install
	test -d runs/demo-adv || $(BIN)/python -m robustcnn.train --dataset mnist5k --adv --out runs/demo-adv
	$(BIN)/python -m robustcnn.train --dataset mnist5k --arch ibpcnn --adv --adv-method ibp --eps 0.2 \
		--epochs 100 --eps-warmup 40 --batch-size 100 --out runs/demo-ibp --overwrite
	$(BIN)/python -m robustcnn.sweep runs/demo-adv runs/demo-ibp --suite certified --out reports/certified

# Randomized smoothing (README "Randomized smoothing"): a model trained on Gaussian noise (sigma 0.5) and the
# standard demo model (trained first if `make demo` has not run), certified L2 radii of their smoothed classifiers.
smoothing: install
	test -d runs/demo-std || $(BIN)/python -m robustcnn.train --dataset mnist5k --out runs/demo-std
	$(BIN)/python -m robustcnn.train --dataset mnist5k --adv --adv-method gaussian --sigma 0.5 \
		--out runs/demo-gauss --overwrite
	$(BIN)/python -m robustcnn.sweep runs/demo-gauss runs/demo-std --suite smoothing --out reports/smoothing

test: install browser
	$(BIN)/python -m pytest -q -m "not slow" --durations=25

test-all: install browser
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff format --check robustcnn tests benchmarks examples
	$(BIN)/ruff check robustcnn tests benchmarks examples

bench: install
	$(BIN)/python -m benchmarks.run

# What only a CUDA GPU shows (benchmarks/gpu_check.py), offline, under 8 minutes on one H200: an AMP PGD-training
# epoch, CUDA vs CPU sweep agreement, PGD-40 against its limit, the out-of-memory back-off. Exits 2 without CUDA.
gpu-check: install
	$(BIN)/python -m benchmarks.gpu_check --out benchmarks/results/gpu

clean:
	rm -rf runs reports/*/ .pytest_cache
