# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo_out
STAMP  := $(VENV)/.installed

.PHONY: install test demo lint clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check handnerf tests tools
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check handnerf tests tools
	$(BIN)/ruff format --check handnerf tests tools

demo: $(STAMP)
	$(BIN)/handnerf synth --preset demo --out $(DEMO)/capture
	$(BIN)/handnerf fit --data $(DEMO)/capture --config configs/demo.yaml --out $(DEMO)/run
	$(BIN)/handnerf render --run $(DEMO)/run --mode orbit --out $(DEMO)/orbit.gif
	$(BIN)/handnerf render --run $(DEMO)/run --mode pose --out $(DEMO)/novel_pose.gif
	$(BIN)/handnerf eval --run $(DEMO)/run --out $(DEMO)/report

clean:
	rm -rf $(DEMO) .pytest_cache
