# Two set-up commands for a fresh machine:  make repro   (pipeline on the embedded sample)
#                                           make test    (the test suite)
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(abspath $(VENV)/bin)
# No network at run time: models, metrics and datasets come from disk only.
export HF_HUB_OFFLINE := 1
export HF_EVALUATE_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false
export GX_ANALYTICS_ENABLED := false

.PHONY: install repro test funnel clean clean-cache

install: $(VENV)/.installed .dvc/plots_offline.html

# torch is pinned in the same pip command as everything else (a local CPU wheel; unpinned, pip
# pulls the CUDA build). constraints.txt pins the whole dependency tree.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,ray]'
	touch $@

# The page `dvc plots show/diff` fill, with vega, vega-lite and vega-embed inline (from the pinned
# vl-convert-python), so the charts draw offline; .dvc/config names it.
.dvc/plots_offline.html: $(VENV)/.installed
	$(PY) -m stages.app.plots $@

repro: install
	PATH="$(BIN):$$PATH" dvc repro
	PATH="$(BIN):$$PATH" soqa funnel

test: install
	PATH="$(BIN):$$PATH" $(PY) -m pytest -q $(PYTEST_ARGS)

funnel: install
	PATH="$(BIN):$$PATH" soqa funnel

# What the pipeline and the tests generate: pipeline outputs (rebuilt by `make repro`, from the DVC
# cache in seconds), reports, failed-gate pages, plots, caches of pytest and hypothesis. The venv
# and the DVC cache (.dvc/cache, which lets repro restore outputs) stay: `make clean-cache` empties it.
GENERATED := data/raw data/stripped data/utf8 data/dedup data/filtered data/top2 data/split data/shards \
             data/rejects/*.parquet data/tokenizer data/eval models/qa-t5 models/.checkpoints \
             reports gx/uncommitted dvc_plots .pytest_cache .hypothesis build
clean:
	rm -rf $(GENERATED)
	find stages tests bench -name __pycache__ -type d -prune -exec rm -rf {} +

clean-cache:
	@echo "removing the DVC cache (.dvc/cache): the next repro recomputes every stage"
	rm -rf .dvc/cache
