# make repro: run the pipeline. make test: run the tests. Both set up .venv and the data first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Keyed on the requirements: editing them reinstalls, a second `make setup` installs nothing.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)
DEBIAN_DATA := /usr/share/datasets/fashion-mnist
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup data repro test lint bench plots predict

setup: $(STAMP) data

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

# The dataset: an explicit FASHION_MNIST_DIR or data/raw wins; else Debian's package, installed when we can.
data:
	@if [ -n "$$FASHION_MNIST_DIR" ] || [ -d data/raw ] || [ -d $(DEBIAN_DATA) ]; then \
		true; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
		echo "could not install dataset-fashion-mnist; prepare will try the other sources"; \
	else \
		echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist' (or set FASHION_MNIST_DIR); carrying on"; \
	fi

repro: setup
	dvc repro

test: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# --- targets filled in by their issues: benchmarks (bench), offline plots (plots), predict ---
bench: setup
	$(BIN)/python -m benchmarks.bench

plots: setup
	@echo "make plots: not implemented yet" && false

IMAGES ?=
predict: setup
	$(BIN)/python -m stages.predict $(IMAGES)
