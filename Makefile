# graphprune — everything a fresh machine needs goes through these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A CPU build of torch is installed first when the environment has none, so that the range in
# pyproject.toml does not pull a multi-gigabyte CUDA build.  Override with TORCH_PIN=...
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -n 2 tests

demo: install
	$(BIN)/graphprune compile yolov5s --num-classes 10 --prune-ratio 0.5 --random-bn 0 \
		--example-shape 1,3,640,640 --out $(DEMO_OUT) --overwrite

# about 25 minutes on 2 CPU cores (the two training runs take most of it)
bench: install
	$(BIN)/python benchmarks/compile_yolov5.py
	$(BIN)/python benchmarks/residual_ops.py
	$(BIN)/python benchmarks/synthetic.py
	$(BIN)/python benchmarks/nwpu.py

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
