#!/usr/bin/env bash
# Compiles every csrc/kernels/*.cu (compile only, no GPU needed) with the flags
# the build passes: to PTX for sm_80 (its code paths through the front end;
# ptxas, where most of the time goes, then runs for sm_90a only) and to machine
# code for sm_90a, and
# the stand-alone benchmarks/*.cu for sm_90, so a broken kernel is caught where
# there is no GPU.
# Then, when nvdisasm is found (PATH, or the nvidia-cuda-nvdisasm wheel the
# Makefile installs), checks the kernels' SASS for a known ptxas miscompile.
# Exits 0 with a message when nvcc is absent.
#
#   PYTHON=...            interpreter whose torch provides the headers
#                         (default: .venv/bin/python if present, else python3)
#   NVCC_EXTRA_FLAGS=...  appended to every nvcc call (e.g. "-Xptxas -v")
#   NVDISASM=...          the disassembler to use
#   CUDA_FILES="..."      compile only these kernel files
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" && -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]]; then
  NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
fi
if [[ -z "$NVCC" ]]; then
  echo "check_cuda_compile: nvcc not found, skipping the CUDA compile check"
  exit 0
fi

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# Include paths and defines as BuildExtension gives them. The CPU torch wheel
# ships the c10/cuda headers but not the generated cuda_cmake_macros.h, which
# C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips (it only holds export macros).
mapfile -t TORCH_FLAGS < <("$PYTHON" - <<'EOF'
import sysconfig
import torch
from torch.utils import cpp_extension as ce
for p in ce.include_paths():
    print(f"-I{p}")
print(f"-I{sysconfig.get_paths()['include']}")
for f in ce.COMMON_NVCC_FLAGS:
    print(f)
print(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
EOF
)
if [[ ! -f "$("$PYTHON" -c 'from torch.utils.cpp_extension import include_paths; print(include_paths()[0])')/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
  TORCH_FLAGS+=("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
fi

FLAGS=("${TORCH_FLAGS[@]}" -Icsrc/include -DTORCH_API_INCLUDE_EXTENSION_H
       -DTORCH_EXTENSION_NAME=_C -DMINI_PAGED_ATTN_WITH_CUDA -O3 -std=c++17 -lineinfo
       --compiler-options -fPIC
       -gencode=arch=compute_80,code=compute_80 -gencode=arch=compute_90a,code=sm_90a
       -DMINI_PAGED_ATTN_SM90A)
# shellcheck disable=SC2206
EXTRA=(${NVCC_EXTRA_FLAGS:-})

OUT_DIR="$(mktemp -d)"
trap 'rm -rf "$OUT_DIR"' EXIT
echo "check_cuda_compile: $("$NVCC" --version | tail -n 1)"
status=0
pids=()
# compile FILE FLAGS...: in the background; prints ok or the compiler's log.
compile() {
  local f=$1 log="$OUT_DIR/$(basename "$1").log"
  shift
  (
    start=$SECONDS
    if "$NVCC" "$@" "${EXTRA[@]}" -c "$f" -o "$OUT_DIR/$(basename "$f").o" >"$log" 2>&1; then
      echo "  ok   $f ($((SECONDS - start)) s)"
      if [[ -n "${NVCC_EXTRA_FLAGS:-}" ]]; then cat "$log"; fi
    else
      echo "  FAIL $f"
      cat "$log"
      exit 1
    fi
  ) &
  pids+=($!)
}
# shellcheck disable=SC2206
files=(${CUDA_FILES:-csrc/kernels/*.cu})  # CUDA_FILES="a.cu b.cu": only those
mkdir -p "$OUT_DIR/keep"  # intermediate files, the cubins among them, for the SASS check below
for f in "${files[@]}"; do compile "$f" "${FLAGS[@]}" --keep --keep-dir "$OUT_DIR/keep"; done
# Stand-alone CUDA benchmarks: no torch, and Hopper's bulk tensor copies need sm_90.
benches=(benchmarks/*.cu)
for f in "${benches[@]}"; do compile "$f" -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90; done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if (( status != 0 )); then
  echo "check_cuda_compile: FAILED"
  exit 1
fi
echo "check_cuda_compile: all ${#files[@]} kernel files compile for sm_80 (PTX) and sm_90a," \
  "${#benches[@]} benchmark file(s) for sm_90"

# ptxas 13.0 (V13.0.88) compiled some cp.async copies with an L2 cache-hint
# operand into LDGSTS instructions whose 64-bit policy descriptor sits in an odd
# uniform register; the GPU stops those as illegal instructions
# (docs/archive/perf-notes-2026-11.md). Look for any such descriptor in the SASS.
NVDISASM="${NVDISASM:-$(command -v nvdisasm || true)}"
if [[ -z "$NVDISASM" ]]; then
  purelib=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  NVDISASM=$(ls "$purelib"/nvidia/cu*/bin/nvdisasm 2>/dev/null | tail -n 1 || true)
fi
if [[ -z "$NVDISASM" ]]; then
  echo "check_cuda_compile: nvdisasm not found, skipping the SASS check"
  exit 0
fi
cubins=("$OUT_DIR"/keep/*.cubin)
if [[ ! -f "${cubins[0]}" ]]; then
  echo "check_cuda_compile: FAILED (no cubins kept for the SASS check)"
  exit 1
fi
bad=0
for cubin in "${cubins[@]}"; do
  n=$("$NVDISASM" -c "$cubin" | grep -cE 'desc\[UR[0-9]*[13579]\]' || true)
  if (( n > 0 )); then
    echo "  FAIL $(basename "$cubin"): $n instructions with an odd uniform descriptor register"
    bad=1
  fi
done
if (( bad != 0 )); then
  echo "check_cuda_compile: FAILED (SASS check)"
  exit 1
fi
echo "check_cuda_compile: SASS check passed (${#cubins[@]} cubins)"
