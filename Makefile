# gsv_accel: the two commands a new machine needs are `make demo` and `make test`;
# both create the virtual environment first if it is missing or out of date.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch is pinned where no NVIDIA GPU is present; GPU users install their own
# torch build first (`make install` then keeps it).
TORCH_CPU_PIN ?= torch==2.13.0
EXTRAS ?= dev,tensorboard,text,deepspeed

.PHONY: install test demo demo-s1 bench bench-official bench-gpu soak lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "torch already installed: $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: install your CUDA build of torch into $(VENV) first, then re-run make install"; \
		exit 1; \
	else \
		$(PYTHON) -m pip install --quiet "$(TORCH_CPU_PIN)"; \
	fi
	$(PYTHON) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest

# The demo, both stages on the bundled corpus with tiny models (a few minutes on 2 CPU cores):
# prepare with the tiny HuBERT and speaker model and train SoVITS v2Pro (S2); prepare again with the
# S2 model's best export (semantic codes) and the tiny BERT and train the GPT (S1). Preparation is cached and re-running
# resumes the run folders. W&B runs offline unless you are logged in.
demo: $(STAMP)
	$(PYTHON) -m gsv_accel.cli prepare --list demo/data/demo.list --hubert demo/tiny_hubert \
		--sv demo/tiny_sv/eres2netv2_tiny.safetensors --out runs/demo_dataset
	$(PYTHON) recipes/s2.py --resume auto
	$(PYTHON) -m gsv_accel.cli prepare --list demo/data/demo.list --hubert demo/tiny_hubert --bert demo/tiny_bert \
		--s2-pretrained "$$(ls -t runs/s2_demo/exports/SoVITS_weights_v2Pro/demo_best_*.pth | head -n 1)" \
		--out runs/demo_dataset_s1
	$(PYTHON) recipes/s1.py --resume auto

# Only the GPT stage (needs the S2 demo's export: run `make demo` once).
demo-s1: $(STAMP)
	$(PYTHON) recipes/s1.py --resume auto

bench: $(STAMP)
	$(PYTHON) benchmarks/bench_data.py
	$(PYTHON) benchmarks/bench_s2.py
	$(PYTHON) benchmarks/bench_validation.py
	$(PYTHON) benchmarks/bench_s1.py
	$(PYTHON) benchmarks/bench_cfm.py
	$(PYTHON) benchmarks/bench_grad_ckpt.py
	$(PYTHON) benchmarks/bench_cpu_conv.py
	$(PYTHON) benchmarks/bench_checkpoint.py

# Side by side with the official GPT-SoVITS code, imported at run time from GSV_OFFICIAL=PATH (a checkout;
# without it the runner says so and exits 0): S2 training steps, data loader, checkpoint save; one table.
# The official modules need the `bench` extra (librosa, ffmpeg-python) and the ffmpeg command line.
bench-official: $(STAMP)
	@if [ -n "$$GSV_OFFICIAL" ]; then $(PYTHON) -c "import librosa, ffmpeg" 2>/dev/null \
		|| $(PYTHON) -m pip install --quiet -e ".[bench]"; fi
	$(PYTHON) benchmarks/vs_official/run_all.py $(BENCH_OFFICIAL_ARGS)

# Needs a CUDA GPU: the default v2 model in fp32/bf16/fp16 and under DeepSpeed ZeRO-2 (README, "Scaling out").
bench-gpu: $(STAMP)
	$(PYTHON) benchmarks/bench_s2_gpu.py $(BENCH_GPU_ARGS)

# Fault-injection soak (docs/reliability.md): one S2 demo run killed/terminated/interrupted at random
# moments, inside saves and prunes, and given a full disk, resumed each time, then compared bitwise
# with an uninterrupted run. A few minutes on 2 CPU cores; SOAK_ARGS="--interruptions 50 --epochs 12".
soak: $(STAMP)
	$(PYTHON) benchmarks/soak_s2.py $(SOAK_ARGS)

lint: $(STAMP)
	$(PYTHON) -m ruff check gsv_accel recipes tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
