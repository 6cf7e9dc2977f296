#!/usr/bin/env bash
# Compiles the CPU sources (csrc/*.cpp, csrc/cpu/*.cpp, csrc/cpu/kernels/*.cpp) for aarch64 Linux,
# compile only, with zig's clang (the ziglang wheel the Makefile installs), so
# code that builds only on x86-64 is caught where there is no Arm machine.
# Exits 0 with a message when ziglang is absent.
#
#   PYTHON=...   interpreter whose torch provides the headers (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
if ! "$PYTHON" -c "import ziglang" 2>/dev/null; then
  echo "check_aarch64_compile: ziglang not installed, skipping the aarch64 compile check"
  exit 0
fi
mapfile -t INCLUDES < <("$PYTHON" - <<'PY'
import sysconfig
from torch.utils import cpp_extension as ce
for p in ce.include_paths():
    print(f"-I{p}")
print(f"-I{sysconfig.get_paths()['include']}")
PY
)
OUT_DIR="$(mktemp -d)"
trap 'rm -rf "$OUT_DIR"' EXIT
# The x86-64 torch's headers need only declarations here; -fopenmp is left out
# because zig ships no omp.h (ATen includes it only where it is found).
FLAGS=(-target aarch64-linux-gnu -std=c++17 -O1 -Icsrc/include "${INCLUDES[@]}"
       -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C -Wno-c++20-extensions
       -Wno-unused-command-line-argument)
export ZIG_GLOBAL_CACHE_DIR="$OUT_DIR/zig-cache" ZIG_LOCAL_CACHE_DIR="$OUT_DIR/zig-cache"
files=(csrc/*.cpp csrc/cpu/*.cpp csrc/cpu/kernels/*.cpp)
status=0
printf '%s\n' "${files[@]}" | xargs -P "${JOBS:-2}" -I{} sh -c \
  '"$0" -m ziglang c++ "$@" -c {} -o "'"$OUT_DIR"'/$(basename {}).o" \
     >"'"$OUT_DIR"'/$(basename {}).log" 2>&1 && echo "  ok   {}" || { echo "  FAIL {}"; cat "'"$OUT_DIR"'/$(basename {}).log"; exit 255; }' \
  "$PYTHON" "${FLAGS[@]}" || status=1
if (( status != 0 )); then
  echo "check_aarch64_compile: FAILED"
  exit 1
fi
echo "check_aarch64_compile: all ${#files[@]} CPU sources compile for aarch64"
