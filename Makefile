# Bootstraps .venv on a fresh machine, then runs the project's jobs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench lint clean firmware firmware-tools rtl-test rtl-report

install: $(STAMP)

# torch first, pinned, so nothing resolves plain `torch` to the multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,inivation,export]"
	# spikingjelly's LIF is the official models' neuron (tests/test_reference.py). Without
	# --no-deps its torchvision requirement replaces torch 2.13.0 by a multi-GB CUDA build.
	$(PY) -m pip install -q --no-deps spikingjelly==0.0.0.0.14
	# Triton (the `gpu` extra): the CUDA path of the LRF-Dyn scan, whose tests run its kernels in
	# Triton's interpreter on the CPU. It declares no dependencies (--no-deps keeps it so); a
	# triton that is already there (CUDA builds of torch bring their own) is left as it is, and
	# where no wheel fits (macOS, Python < 3.11 for this pin) those tests skip.
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q --no-deps triton==3.9.0 \
		|| echo "triton not installed: the Triton scan tests will skip"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	$(VENV)/bin/spikestream demo

# Every benchmark prints its figures beside a peer measured in the same run; the peers that are
# not dependencies of the project (evlib, faery) come with the `bench` extra.
# `make bench BENCH_ARGS=--quick` for a short pass (each script has a --quick mode).
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	for b in benchmarks/*.py; do echo "== $$b"; OMP_NUM_THREADS=1 $(PY) $$b $(BENCH_ARGS) || exit 1; done

# The C99 firmware of the LRF-Dyn device: fw-host (native) and the Cortex-M3 image for QEMU's
# mps2-an385 (firmware_bridge/firmware/Makefile), with their sizes. The cross tools and QEMU are
# installed with apt-get where they are missing and apt-get can be used; else that build is skipped.
ARM_TOOLS := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
firmware: firmware-tools
	$(MAKE) -C firmware_bridge/firmware

firmware-tools:
	@if command -v arm-none-eabi-gcc >/dev/null 2>&1 && command -v qemu-system-arm >/dev/null 2>&1; \
	then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update && apt-get install -y --no-install-recommends $(ARM_TOOLS); \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo apt-get update && sudo apt-get install -y --no-install-recommends $(ARM_TOOLS); \
	else \
		echo "firmware: arm-none-eabi-gcc or qemu-system-arm missing and apt-get unusable: the QEMU target is skipped"; \
	fi
# The LRF-Dyn core as RTL (firmware_bridge/rtl): bit-exact simulation against the numpy core,
# and synthesis for an iCE40 UP5K with yosys + nextpnr-ice40 (RTL_ARGS, e.g. "--dim 256").
RTL_ARGS ?=
# rtl-test also runs the emitted Verilog in Icarus (slow tests; needs iverilog).
rtl-test: $(STAMP)
	$(PY) -m pip install -q -e ".[rtl]"
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "slow or not slow" tests/test_rtl.py

rtl-report: $(STAMP)
	$(PY) -m pip install -q -e ".[rtl]"
	$(PY) -m spikestream.firmware_bridge.rtl.report $(RTL_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache firmware_bridge/firmware/build
