# `make test` and `make demo` set everything up on a fresh machine: a virtualenv
# in .venv, the CPU build of torch, the extension, the test dependencies.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
JOBS ?= 2
VENV := .venv
PY := $(VENV)/bin/python
SOURCES := setup.py pyproject.toml CMakeLists.txt $(shell find csrc -type f)

.PHONY: all build test demo bench bench-blocks bench-engine bench-copy clean

all: test

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and alone: a later install must never swap in a CUDA build.
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -r requirements-dev.txt
	# Optional: lets scripts/check_cuda_compile.sh read the kernels' SASS.
	$(PY) -m pip install -q nvidia-cuda-nvdisasm || echo "nvdisasm not installed: no SASS check"
	# Optional: zig's clang, for scripts/check_aarch64_compile.sh.
	$(PY) -m pip install -q ziglang || echo "ziglang not installed: no aarch64 compile check"
	touch $@

# --no-build-isolation builds against the torch above instead of downloading one.
# setup.py runs CMake (CMakeLists.txt) in build/cmake, which the wheel check reuses.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	MAX_JOBS=$(JOBS) $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

test: build
	bash scripts/check_cuda_compile.sh
	bash scripts/check_aarch64_compile.sh
	$(PY) -m pytest tests

demo: build
	$(PY) -m mini_paged_attn.demo $(ARGS)

bench: build
	$(PY) benchmarks/bench_decode.py $(ARGS)

bench-blocks: build
	$(PY) benchmarks/bench_block_manager.py $(ARGS)

bench-engine: build
	$(PY) benchmarks/bench_engine.py $(ARGS)

# GPU only (sm_90): the decode kernel's load paths without its math.
bench-copy:
	mkdir -p build
	nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -o build/copy_paths \
		benchmarks/copy_paths.cu
	build/copy_paths $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info mini_paged_attn/*.so
