# scone-data: every command a newcomer needs. `make help` lists them.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help setup demo test lint format bench gpu-prepare train-demo soak clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

setup: $(STAMP)  ## create .venv and install the pinned stack (plain pip: see ../shared/ENV.md)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

demo: setup  ## build the demo corpus (real photos, hand-made boxes, no weights) and validate it
	$(BIN)/scone-data build pipelines/demo.yaml
	$(BIN)/scone-data validate out/demo

test: setup  ## run the test suite
	$(BIN)/python -m pytest -q

lint: setup  ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup  ## CPU benchmarks and the GPU scripts' smoke modes; tables printed, JSON in bench/out/
	mkdir -p bench/out
	$(BIN)/python bench/cpu_pairs.py --out bench/out/cpu_pairs.json
	$(BIN)/python bench/cpu_wds_read.py --out bench/out/cpu_wds_read.json
	$(BIN)/python bench/cpu_scale.py --out bench/out/cpu_scale.json
	$(BIN)/python bench/gpu_assets.py bench/out/assets
	PATH=$(abspath $(BIN)):$$PATH GPU_ASSETS=bench/out/assets OUT=bench/out/gpu_smoke bash bench/gpu_run.sh --smoke
	$(BIN)/python bench/gpu_engine.py --smoke --out bench/out/gpu_smoke/gpu_engine.json
	@echo "GPU machine: make gpu-prepare here, then the device command in README.md (Benchmarks)"

gpu-prepare: setup  ## fill .whl/ (wheels + assets) for a GPU session; see README.md, Benchmarks
	bash bench/gpu_prepare.sh

soak: setup  ## fault-injection soak: ~575 SIGKILL-and-resume trials of build and regen (~45 min on 2 cores)
	SCONE_SOAK_TRIALS=25 $(BIN)/python -m pytest -q tests/reliability/test_reliability_faults.py tests/runtime/test_runtime_kill.py

TRAIN_DEMO := out/train_demo
train-demo: demo  ## tiny-preset trainer on the demo shards: stage 1, then stage 2, then sample pictures (CPU)
	$(BIN)/scone-train training/configs/stage1_step1.yaml preset=tiny model.path=null data.shards=[out/demo/shards] \
	  train.steps=4 train.warmup_steps=1 train.save_every=2 train.output_dir=$(TRAIN_DEMO)/stage1
	$(BIN)/scone-train training/configs/stage2_step1.yaml preset=tiny model.path=$(TRAIN_DEMO)/stage1/final \
	  data.shards=[out/demo/shards] train.steps=4 train.warmup_steps=1 train.save_every=2 train.output_dir=$(TRAIN_DEMO)/stage2
	$(BIN)/scone-train sample $(TRAIN_DEMO)/stage2/final --shards out/demo/shards --out $(TRAIN_DEMO)/samples --steps 4 --limit 4
	@echo "samples and contact sheet: $(TRAIN_DEMO)/samples"

clean:  ## remove build outputs (keeps .venv)
	rm -rf out bench/out .pytest_cache
