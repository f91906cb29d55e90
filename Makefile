# wastecls developer commands. `make demo` and `make test` are the two set-up commands.
PYTHON ?= python3
# Torch is installed first, on its own: on the project machines these exact releases lie on
# local disk. Elsewhere set TORCH_SPEC (e.g. TORCH_SPEC="torch torchvision") or pre-install torch.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO ?= demo
TRASHNET ?= ../shared/data/trashnet
GARBAGE ?= ../shared/data/garbage-v2
SHARED_WEIGHTS ?= ../shared/weights/tf_efficientnet_lite0.in1k.safetensors

export HF_HUB_OFFLINE ?= 1

.PHONY: install test test-fast demo lint bench docs model

install:
	$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PYTHON) -m pip install $(TORCH_SPEC)
	$(PYTHON) -m pip install -e ".[dev]"

test:  # installs first when wastecls or its test tools are missing (a fresh clone)
	@$(PYTHON) -c "import waste_cli, timm, pytest, psutil" 2>/dev/null || $(MAKE) install
	$(PYTHON) -m pytest -q --durations=15

test-fast:  # the in-process tests only: no child processes, no torchrun jobs
	@$(PYTHON) -c "import waste_cli, timm, pytest, psutil" 2>/dev/null || $(MAKE) install
	$(PYTHON) -m pytest -q -m "not subprocess and not distributed"

docs:  # the flag reference, generated from the Typer app (a test fails when it is stale)
	$(PYTHON) -m typer waste_cli.cli.app utils docs --name wastecls --output docs/cli.md

lint:
	$(PYTHON) -m ruff check waste_cli tests bench

demo: install
	DEMO=$(DEMO) bash bench/demo.sh

# Rebuild the built-in model (waste_cli/assets/models/) from TrashNet without the samples/ photos.
model:
	[ -d bench/out/other ] || $(PYTHON) bench/other_photos.py --out bench/out/other
	$(PYTHON) bench/build_model.py --data $(TRASHNET) --more $(GARBAGE) \
		--weights $(SHARED_WEIGHTS) --other bench/out/other

BENCH_DATA ?= bench/out/data

# The benchmarks behind BENCHMARKS.md's tables (they need ../shared; about 5 hours on 2 cores).
bench:
	$(PYTHON) bench/bench_prepare.py --data $(TRASHNET)
	wastecls prepare $(TRASHNET) --out $(BENCH_DATA) --overwrite -q
	$(PYTHON) bench/bench_train.py --data $(TRASHNET) --weights $(SHARED_WEIGHTS) \
		--seeds 0 1 2 --keep bench/out/train_run
	$(PYTHON) bench/bench_predict.py --model bench/out/train_run/seed0/best.pt --data $(TRASHNET) \
		--calib-data $(BENCH_DATA)/train --test-split $(BENCH_DATA)/test
	$(PYTHON) bench/bench_camera.py --model bench/out/train_run/seed0/best.pt --data $(TRASHNET) \
		--per-class 200
	$(PYTHON) bench/bench_boxes.py --model bench/out/train_run/seed0/best.pt --data $(TRASHNET)
	$(PYTHON) bench/bench_pseudo.py --data $(TRASHNET) --weights $(SHARED_WEIGHTS)
	$(PYTHON) bench/bench_ddp.py --data $(BENCH_DATA) --weights $(SHARED_WEIGHTS)
	bash bench/loco.sh bench/out/loco $(TRASHNET) $(SHARED_WEIGHTS) cardboard glass metal
	[ -d bench/out/other ] || $(PYTHON) bench/other_photos.py --out bench/out/other
	$(PYTHON) bench/bench_confidence.py --loco bench/out/loco --other bench/out/other
	$(PYTHON) bench/bench_flag.py --model bench/out/train_run/seed0/best.pt \
		--images $(TRASHNET)/glass
	$(PYTHON) bench/bench_evaluate.py --data $(BENCH_DATA)
	$(PYTHON) bench/bench_transfer.py $(TRASHNET) $(GARBAGE) --weights $(SHARED_WEIGHTS)
	$(PYTHON) bench/bench_duplicates.py
	$(PYTHON) bench/bench_audit.py --data $(TRASHNET) --weights $(SHARED_WEIGHTS) --tta
	wastecls audit bench/out/transfer/merged --out bench/out/audit/merged --overwrite
	$(PYTHON) bench/bench_review.py
	$(PYTHON) bench/bench_deploy.py --model waste-lite0 --data $(TRASHNET)
