# aif: the two commands are `make repro` and `make test`; `make help` lists the rest.
# Every target installs the locked environment into .venv on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
UV_VERSION := $(shell sed -n 's/^uv==\([0-9.]*\).*/\1/p' requirements.lock)
export PATH := $(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help install repro test docs examples bench lint lock lab hooks export clean-nbs check-nbs clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python --require-hashes requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@# `dvc plots show` with vega inlined (.dvc/config: plots.html_template): works offline
	@$(BIN)/aif plots-page
	@touch $@

install: $(STAMP) ## create .venv and install the locked dependencies (done by every target)

repro: $(STAMP) ## run the whole DVC pipeline (simulate -> ingest -> ...), then say what it made
	dvc repro
	@echo && aif summary

test: $(STAMP) ## run every test: pytest (notebooks, pipeline, properties) on 2 workers
	python -m pytest -n 2 $(PYTEST_ARGS)

docs: $(STAMP) ## the notebooks as a site in _site/ (offline): open _site/index.html
	aif docs $(DOCS_ARGS)

examples: $(STAMP) ## run the notebooks' examples and write their outputs in (then commit them)
	aif examples $(EXAMPLES_ARGS)

bench: $(STAMP) ## speed and memory benchmarks (long; prints figures and peak RSS)
	python benchmarks/run.py $(BENCH_ARGS)

lint: $(STAMP) ## ruff on the package, tests and benchmarks
	ruff check aif tests benchmarks

lock: ## refresh requirements.lock from pyproject.toml (needs network)
	@test -x $(BIN)/uv || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet uv; }
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
		--upgrade --quiet -o requirements.lock
	@rm -f $(STAMP)

lab: $(STAMP) ## JupyterLab on 127.0.0.1, the project kernel, notebooks cleaned as saved (LAB_ARGS=...)
	@# the kernel runs this venv's python, found through a symlinked .venv too
	@$(realpath $(BIN))/python -m ipykernel install --sys-prefix --name python3 \
		--display-name "Python 3 (aif .venv)" >/dev/null
	@# nbdev's clean runs on every save (pyproject: jupyter_hooks = true), from this command
	@# line rather than ~/.jupyter: what `make check-nbs` wants is what Lab writes
	@# no news feed or update check: nothing fetched from the internet (air-gapped laptops);
	@# the answer to Lab's "fetch news?" question goes into .venv's settings, not ~/.jupyter
	@mkdir -p $(realpath $(VENV))/share/jupyter/lab/settings
	@echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
		> $(realpath $(VENV))/share/jupyter/lab/settings/overrides.json
	jupyter lab --ServerApp.ip=127.0.0.1 \
		--ContentsManager.pre_save_hook=nbdev.clean.clean_jupyter --LabApp.news_url=None \
		--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate \
		$(LAB_ARGS)

hooks: $(STAMP) ## this clone only: `make check-nbs` before each commit, nbdev's notebook merge driver
	@printf '#!/bin/sh\nexec make --no-print-directory check-nbs\n' > .git/hooks/pre-commit
	@chmod +x .git/hooks/pre-commit
	@git config --local merge.jupyternotebook.name "resolve notebook conflicts with nbdev"
	@git config --local merge.jupyternotebook.driver "$(BIN)/nbdev-merge %O %A %B %P"
	@grep -qxF '*.ipynb merge=jupyternotebook' .git/info/attributes 2>/dev/null || \
		echo '*.ipynb merge=jupyternotebook' >> .git/info/attributes
	@echo "installed in this clone only: .git/hooks/pre-commit (make check-nbs), the merge driver"
	@echo "in .git/config and .git/info/attributes; git diff is unchanged; nothing outside the repo"

export: $(STAMP) ## regenerate aif/ from nbs/ and clean the notebooks
	nbdev-export
	nbdev-clean

check-nbs: $(STAMP) ## fail if nbdev-export or nbdev-clean would change a tracked file
	python -m pytest -q tests/test_notebooks.py -k "would_change_nothing or papermill"

clean: ## remove the virtual environment and caches (data and models stay)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
