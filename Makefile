# make repro: run the pipeline. make test: run the tests. Both set up .venv and the data first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Keyed on the requirements and pyproject.toml: editing them reinstalls, a second `make setup` installs nothing.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)
DEBIAN_DATA := /usr/share/datasets/fashion-mnist
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup data browser repro test test-all lint bench plots notebook predict compare tune seeds

setup: $(STAMP) data

# A venv without pip (Debian's python3 without python3-venv) is removed, so the next try starts clean.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "python3 -m venv failed: on Debian/Ubuntu run 'sudo apt-get install python3-venv'"; exit 1; }
	$(BIN)/pip install --quiet -r requirements-dev.txt --editable .
	rm -f $(VENV)/.installed-*
	touch $@

# $(call apt_or_hint,PACKAGE,WHAT FOR): install a Debian package when we are root with apt-get, else say how.
apt_or_hint = if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's $(1) ($(2))"; \
		{ apt-get install -y -qq $(1) >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq $(1) >/dev/null; }; } || echo "could not install $(1)"; \
	else \
		echo "$(1) not found: run 'sudo apt-get install $(1)' ($(2)); carrying on"; \
	fi

# The dataset: an explicit FASHION_MNIST_DIR or data/raw wins; else Debian's package, installed when we can.
data:
	@if [ -n "$$FASHION_MNIST_DIR" ] || [ -d data/raw ] || [ -d $(DEBIAN_DATA) ]; then true; \
	else $(call apt_or_hint,dataset-fashion-mnist,the Fashion-MNIST files; or set FASHION_MNIST_DIR); fi

# The offline-plots test renders pages in headless Chromium.
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$CHROMIUM" ]; then true; \
	else $(call apt_or_hint,chromium,for the offline-plots test; or set CHROMIUM); fi

repro: setup
	dvc repro

# The long end-to-end checks (experiments, team sharing, the queue sweep, photos; minutes) are left to
# `make test-all` and CI, to keep this under 5 minutes.
test: setup vendor browser
	$(BIN)/pytest -m "not long"

test-all: setup vendor browser
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Training throughput, notebook-style loop vs ours, side by side: writes benchmarks/results.json.
bench: setup
	$(BIN)/python -m benchmarks.bench

# Offline plots: DVC's page loads Vega from a CDN, so render with our template and put the JavaScript next to it.
# Majors follow DVC 3.67 (dvc-render): its specs are Vega-Lite v5 and its CDN page uses vega 5 and vega-embed 6.
# Each pin carries the sha256 of its npm tarball, checked after download, so a re-fetch gets the bytes we tested.
VEGA_PKGS := \
	vega@5.33.1=1b8504b6731c5311be3269c4d84ca996a5cc293bc772283293ede20c490e16c3 \
	vega-lite@5.23.0=e4cbfdd8f6f1abe381c59cd558fd6a559c12b1496bfdf2e0c3295263a40fe4da \
	vega-embed@6.29.0=ecf1ee709c2bac9e0a4ead6908114b05b62c71493e10a8a4308109bb070f8eb1
VEGA_DIR := vendor/vega
# Keyed on the pins, like STAMP: changing one re-fetches.
VEGA_STAMP := $(VEGA_DIR)/.fetched-$(shell echo $(VEGA_PKGS) | sha256sum | cut -c1-16)

.PHONY: vendor
vendor: $(VEGA_STAMP)

# Only the built *.min.js are kept, with each package's LICENSE and package.json (its license field; vega's
# tarball has no LICENSE file). Built in a scratch folder so an interrupted fetch never looks complete.
$(VEGA_STAMP):
	@command -v npm >/dev/null 2>&1 || $(call apt_or_hint,npm,to fetch Vega for the offline plots)
	@command -v npm >/dev/null || { echo "fetching Vega needs npm (Debian/Ubuntu: apt-get install npm)"; exit 1; }
	@echo "fetching $(foreach pin,$(VEGA_PKGS),$(firstword $(subst =, ,$(pin)))) from npm into $(VEGA_DIR)"
	@rm -rf $(VEGA_DIR) $(VEGA_DIR).tmp
	@mkdir -p $(VEGA_DIR).tmp/licenses
	@set -e; cd $(VEGA_DIR).tmp; for pin in $(VEGA_PKGS); do \
		spec=$${pin%%=*}; name=$${spec%@*}; \
		tgz=$$(npm pack --silent $$spec); \
		echo "$${pin#*=}  $$tgz" | sha256sum --check --quiet; \
		mkdir unpacked licenses/$$name; tar -xzf $$tgz -C unpacked; \
		cp unpacked/package/build/$$name.min.js .; \
		find unpacked/package -maxdepth 1 \( -iname 'licen[cs]e*' -o -name package.json \) -exec cp {} licenses/$$name/ \; ; \
		rm -rf unpacked $$tgz; \
		echo "$$spec sha256=$${pin#*=}" >> VERSIONS; \
	done
	@mv $(VEGA_DIR).tmp $(VEGA_DIR)
	@touch $@

# `make plots` renders the workspace; `make plots REVS="main my-exp"` compares revisions (`dvc plots diff`, offline
# too: it reads them from git). Rendered into a scratch folder that replaces dvc_plots/ whole, so no file of an
# earlier run stays behind and an interrupted run leaves the last page as it was.
REVS ?=
plots: setup $(VEGA_STAMP)
	@rm -rf dvc_plots.tmp
	@# DVC's own line names the scratch folder, which is gone a moment later: ours below names the page.
	@dvc plots $(if $(strip $(REVS)),diff $(REVS),show) --out dvc_plots.tmp --html-template .dvc/plots/offline.html > /dev/null
	@mkdir -p dvc_plots.tmp/vendor
	@cp -R $(VEGA_DIR)/*.min.js $(VEGA_DIR)/licenses $(VEGA_DIR)/VERSIONS dvc_plots.tmp/vendor/
	@rm -rf dvc_plots && mv dvc_plots.tmp dvc_plots
	@echo "offline plots: open $(CURDIR)/dvc_plots/index.html (Vega is in dvc_plots/vendor/, no network needed)"

# The original notebook as one experiment: every key of benchmarks/notebook.yaml as a -S option.
# If the keys cannot be read, stop there: an empty list would run the defaults under the notebook's name.
notebook: setup
	args=$$($(BIN)/python -m benchmarks.notebook) && eval dvc exp run --temp -n notebook --force $$args

# The experiment table: one row per experiment, the params that differ, both models' test accuracy and loss.
# ARGS go to `dvc exp show` (-A, -a, --rev REV, -n N); ARGS=--md prints Markdown for a pull request.
ARGS ?=
compare: $(STAMP)
	@$(BIN)/python -m stages.compare $(ARGS)

# An Optuna study over tune.yaml, every trial a DVC experiment: ARGS="--trials N --workers K --storage URL --push REMOTE".
tune: setup
	@$(BIN)/python -m stages.tune $(ARGS)

# The same params over N seeds, as queued experiments run by JOBS workers (one torch thread each); make compare
# then shows them as one row, mean ± std. SEED_KEYS: which seeds change (data.seed also changes the split).
N ?= 3
JOBS ?= 2
SEED_KEYS ?= mlp.seed cnn.seed
seeds: setup
	@for seed in $$(seq 0 $$(($(N) - 1))); do \
		dvc exp run --queue $(foreach key,$(SEED_KEYS),-S $(key)=$$seed) $(ARGS) || exit 1; done
	OMP_NUM_THREADS=1 dvc queue start -j $(JOBS)
	@echo "follow with dvc queue status; make compare shows them as one row once they are done"

# make predict IMAGES="shoe.jpg shirt.png" [MODEL=mlp] [SHOW=folder]; without IMAGES it says so before any setup.
IMAGES ?=
MODEL ?= cnn
SHOW ?=
predict: $(if $(strip $(IMAGES)),$(STAMP),predict-usage)
	@$(BIN)/python -m stages.predict $(IMAGES) --model $(MODEL) $(if $(strip $(SHOW)),--show $(SHOW))

.PHONY: predict-usage
predict-usage:
	@echo 'error: no pictures given: make predict IMAGES="shoe.jpg shirt.png" (PNG or JPEG; MODEL=mlp for the MLP, SHOW=folder to see what the model saw)' >&2
	@exit 2
