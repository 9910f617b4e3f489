# graphprune — everything a fresh machine needs goes through these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A CPU build of torch is installed first when the environment has none, so that the range in
# pyproject.toml does not pull a multi-gigabyte CUDA build.  Override with TORCH_PIN=...
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO_OUT ?= runs/demo

# The second environment: torchvision and ultralytics need torch 2.14.1 (≈ 5.5 GB, from this
# disk), the core keeps working with torch 2.13.0.  make test runs the ultralytics tests there.
TV_VENV  ?= .venv-tv
TV_PIN   ?= torch==2.14.1 torchvision==0.29.1
TV_STAMP := $(TV_VENV)/.installed

.PHONY: install install-tv test demo bench bench-zoo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install-tv: $(TV_STAMP)

$(TV_STAMP): pyproject.toml
	test -x $(TV_VENV)/bin/python || $(PYTHON) -m venv $(TV_VENV)
	$(TV_VENV)/bin/python -c "import torchvision" 2>/dev/null || \
		$(TV_VENV)/bin/pip install -q $(TV_PIN)
	$(TV_VENV)/bin/pip install -q -e ".[dev,ultralytics,timm]"
	touch $(TV_STAMP)

# core suite on torch 2.13.0, then the ultralytics suite on torch 2.14.1 (never skipped there)
test: install install-tv
	$(BIN)/python -m pytest -q -n 2 -m "not ultralytics" tests
	YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$(CURDIR)/runs/ultralytics-settings GP_REQUIRE_ULTRALYTICS=1 \
		$(TV_VENV)/bin/python -m pytest -q -n 2 -m ultralytics tests

# synthetic data → baseline → progressive sparse training → compile at LFA± <= 1 % → 5-epoch
# fine-tune → report with baseline, sparse, pruned and fine-tuned mAP (≈ 9 min)
demo: install
	$(BIN)/graphprune demo --out $(DEMO_OUT) --overwrite

# several hours on 2 CPU cores (the training runs take most of it; tradeoff.py alone about
# 3 h on the synthetic set and 5 h on NWPU, both reusing finished runs when run again)
bench: install
	$(BIN)/python -m benchmarks.compile_yolov5
	$(BIN)/python -m benchmarks.residual_ops
	$(BIN)/python -m benchmarks.node_cost
	$(BIN)/python -m benchmarks.flops
	$(BIN)/python -m benchmarks.latency --round-to 8 --runtime-widths --profile
	$(BIN)/python -m benchmarks.latency --round-to 8 --runtime-widths --imgsz 320
	$(BIN)/python -m benchmarks.latency --round-to 8 --runtime-widths --no-torch --seed 1 --name latency_seed1
	$(BIN)/python -m benchmarks.latency --round-to 8 --runtime-widths --no-torch --seed 1 --imgsz 320 --name latency_320_seed1
	$(BIN)/python -m benchmarks.residual --random yolov5s --imgsz 640
	$(BIN)/python -m benchmarks.residual_headroom
	$(MAKE) bench-zoo
	$(BIN)/python -m benchmarks.sparsity_overhead
	$(BIN)/python -m benchmarks.synthetic
	$(BIN)/python -m benchmarks.ablation
	$(BIN)/python -m benchmarks.ablation --reuse --lfa-criterion two-sided --tag _two_sided
	# bias folding and reconstruct-vs-couple were measured on the demo's L1RR model
	test -f runs/demo-l1rr/sparse/last.pt || $(BIN)/graphprune demo --sparsity l1rr --no-finetune --lfa-criterion plus --out runs/demo-l1rr --overwrite
	$(BIN)/python -m benchmarks.fold --weights runs/demo-l1rr/sparse/last.pt --data runs/demo-l1rr/data/data.yaml
	$(BIN)/python -m benchmarks.residual --weights runs/demo-l1rr/sparse/last.pt --data runs/demo-l1rr/data/data.yaml
	$(BIN)/python -m benchmarks.nwpu
	$(BIN)/python -m benchmarks.tradeoff --data synthetic
	$(BIN)/python -m benchmarks.residual_headroom --weights runs/tradeoff-synthetic/seed0/sparse-progressive/last.pt --threshold 0.01 --tag _synthetic_progressive
	$(BIN)/python -m benchmarks.tradeoff --data nwpu
	# the collapse-proof mode trained for the 50 % the NWPU acceptance asks (the same baselines)
	$(BIN)/python -m benchmarks.tradeoff --data nwpu --methods progressive-scratch@0.5 --lfa-criteria two-sided --flops-targets 0.5 --widths none --cache --name tradeoff_nwpu_target50
	# two more seeds of it, then all four in one table
	$(BIN)/python -m benchmarks.tradeoff --data nwpu --methods progressive-scratch@0.5 --lfa-criteria two-sided --flops-targets 0.5 --widths none --cache --seeds 2,3 --name tradeoff_nwpu_target50_seeds23
	$(BIN)/python -m benchmarks.tradeoff_merge benchmarks/results/tradeoff_nwpu_target50.json benchmarks/results/tradeoff_nwpu_target50_seeds23.json --name tradeoff_nwpu_target50_all
	# NS and two dense widths bracketing the cut's FLOPs beside seeds 2 and 3 (their runs reused)
	$(BIN)/python -m benchmarks.tradeoff --data nwpu --methods progressive-scratch@0.5,ns --lfa-criteria two-sided --flops-targets 0.5 --widths 0.16,0.15 --cache --seeds 2,3 --name tradeoff_nwpu_target50_yardsticks_seeds23
	# cuts beyond the trained target (−60 %, −70 %) beside the narrowest dense width, on the same
	# seeds (their runs reused); the committed table merged two one-seed runs of this configuration
	$(BIN)/python -m benchmarks.tradeoff --data nwpu --methods progressive-scratch@0.5,ns --lfa-criteria two-sided --flops-targets 0.5,0.6,0.7 --widths 0.14 --cache --seeds 2,3 --name tradeoff_nwpu_target50_cuts_seeds23
	# benchmarks/README.md from its template and the results just written
	$(BIN)/python -m benchmarks.summary

# the prunability zoo needs torchvision and ultralytics: the second environment
# graphprune's, torchvision's and ultralytics' models in results/zoo.*, timm's in
# results/zoo_timm.*; torch-pruning runs beside graphprune on each
bench-zoo: install-tv
	YOLO_OFFLINE=1 $(TV_VENV)/bin/python -m benchmarks.zoo --sources graphprune,torchvision,ultralytics --stem zoo
	$(TV_VENV)/bin/python -m benchmarks.zoo --sources timm

clean:
	rm -rf $(VENV) $(TV_VENV) runs build *.egg-info .pytest_cache
