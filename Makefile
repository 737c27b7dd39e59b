# Two entry points: `make demo` and `make test`. Both (re)build .venv only
# when pyproject.toml changed, so a second run spends seconds on set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow venv clean FORCE

venv: $(STAMP)

# avser is installed editable: a .venv copied or linked from another checkout
# would import that checkout's code, so the stamp records whose it is.
ifneq ($(shell cat $(STAMP) 2>/dev/null),$(CURDIR))
$(STAMP): FORCE
endif
FORCE:

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel; a bare torch pulls CUDA packages.
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 torchvision==0.28.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	@echo '$(CURDIR)' > $(STAMP)

# The main job on the embedded defaults: synthetic corpus -> Ray Data features
# -> Ray Tune + Optuna search (ASHA) -> KLDA head -> best model registered;
# then the registered model classifies a clip of a speaker it never saw
# (another seed of the same generator).
HELDOUT := out/synthetic-demo-heldout
demo: $(STAMP)
	$(BIN)/python jobs/tune_fusion.py --config configs/tune_fusion.yaml
	@test -f $(HELDOUT)/corpus.json || $(BIN)/avser synth --out $(HELDOUT) --clips 2 --seed 1 \
		--config configs/synthetic_demo.yaml --quiet
	$(BIN)/avser predict $(HELDOUT)/spk01_happy_00001.mp4 --model avser@candidate

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu" --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow"

clean:
	rm -rf $(VENV) mlruns ray_results
