# Set-up and everyday commands. Every target installs what it needs first (into .venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export NO_ALBUMENTATIONS_UPDATE := 1
# transparent huge pages for PyTorch's CPU allocator: fewer page faults on large temporaries
export THP_MEM_ALLOC_ENABLE := 1
# the real-data tests' datasets (coco_tiny, raccoon): ../shared/data beside the checkout, when it
# exists and DETECTOR_SHARED_DATA is not set already (tests/conftest.py; they skip without it)
SHARED_DATA_DIR := $(abspath $(dir $(abspath $(firstword $(MAKEFILE_LIST))))../shared/data)
ifneq ($(wildcard $(SHARED_DATA_DIR)/.),)
export DETECTOR_SHARED_DATA ?= $(SHARED_DATA_DIR)
endif

.PHONY: install test test-fast test-browser lint inspect-data train eval bench gpu-checks study study-imbalanced demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# the tests run one torch thread each (tests/conftest.py): two processes keep both cores of a
# small machine busy (pytest-xdist); TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= 2
test: install  ## the whole suite (CPU; GPU tests skip without CUDA)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(ARGS)

test-fast: install  ## everything but the slow (real training run) tests
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow" $(ARGS)

test-browser: install  ## the page in headless chromium (installs Debian's chromium + chromedriver)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium chromium-driver)
	$(BIN)/python -m pytest -m browser $(ARGS)

lint: install
	$(BIN)/ruff check detector tools tests datasets

inspect-data: install  ## look at the data before training: contact sheet, box sizes vs anchors, counts, anchor coverage (ARGS="experiment=raccoon")
	$(BIN)/python tools/inspect_data.py $(ARGS)

train: install  ## focal-loss Faster R-CNN on the generated shapes set (2-core CPU: ~5-9 min with bf16, ~25 min fp32 on AVX2)
	$(BIN)/python tools/train_net.py experiment=focal $(ARGS)

eval: install  ## COCO mAP of the newest finished, evaluated run (checkpoint=PATH pins one)
	$(BIN)/python tools/eval.py $(ARGS)

demo: install  ## web demo of the newest finished, evaluated run's model (trains the shapes model first when there is no final.pth)
	test -n "$$(find outputs -path '*/checkpoints/final.pth' 2>/dev/null | head -n 1)" || \
		$(BIN)/python tools/train_net.py experiment=focal
	$(BIN)/python tools/serve.py $(ARGS)

BENCH_MODEL_ARGS ?=
bench: install  ## target assignment, then the whole model (CPU: a few minutes), vs torchvision
	$(BIN)/python tools/bench_ops.py $(ARGS)
	$(BIN)/python tools/bench_model.py $(BENCH_MODEL_ARGS)

gpu-checks: install  ## on a GPU machine: GPU tests + every GPU benchmark, one log (tools/gpu_checks.sh)
	bash tools/gpu_checks.sh

STUDY_ITERATIONS ?= 300
STUDY_EVAL_PERIOD ?= 150
STUDY_STAMP := $(shell date +%Y-%m-%d_%H-%M-%S)
STUDY_DIR ?= outputs/study/$(STUDY_STAMP)
study: install  ## CE vs focal, 2 seeds each, 300 iterations (~30 min on a 2-core AVX2 CPU), then compare.py + analyze.py
	$(BIN)/python tools/train_net.py -m experiment=ce,focal seed=0,1 \
		schedule.iterations=$(STUDY_ITERATIONS) train.eval_period=$(STUDY_EVAL_PERIOD) \
		hydra.sweep.dir=$(STUDY_DIR) $(ARGS)
	$(BIN)/python tools/compare.py $(STUDY_DIR) --out $(STUDY_DIR)/compare
	$(BIN)/python tools/analyze.py $(STUDY_DIR) --out $(STUDY_DIR)/analysis
	@echo "study report: $(STUDY_DIR)/compare (summary.md, curves.png, pr_curves.png) and $(STUDY_DIR)/analysis (analysis.md, errors.png, calibration.png, ...)"

IMBALANCED_ITERATIONS ?= 300
IMBALANCED_EVAL_PERIOD ?= 150
IMBALANCED_ARMS ?= ce_imbalanced,focal_imbalanced,ohem_imbalanced,class_balanced_ce_imbalanced,class_balanced_focal_imbalanced
study-imbalanced: install  ## CE, focal, OHEM, class-balanced CE and focal on the imbalanced shapes set (star ~1/10 of each other shape), 3 seeds, RoIAlign, 300 iterations (48 min of runs on a 2-core bf16 CPU, measured two at a time), then compare + analyze
	$(BIN)/python tools/train_net.py -m experiment=$(IMBALANCED_ARMS) seed=0,1,2 \
		model=vgg16_bn_align schedule.iterations=$(IMBALANCED_ITERATIONS) \
		train.eval_period=$(IMBALANCED_EVAL_PERIOD) hydra.sweep.dir=$(STUDY_DIR) $(ARGS)
	$(BIN)/python tools/compare.py $(STUDY_DIR) --out $(STUDY_DIR)/compare
	$(BIN)/python tools/analyze.py $(STUDY_DIR) --out $(STUDY_DIR)/analysis
	@echo "study report: $(STUDY_DIR)/compare and $(STUDY_DIR)/analysis"

clean:
	rm -rf outputs .pytest_cache .ruff_cache
