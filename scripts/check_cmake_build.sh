#!/usr/bin/env bash
# Builds the extension with CMake (CMakeLists.txt, the second build path next to
# setup.py), CPU only, into a temporary directory, then imports the module it
# built from a temporary copy of the package in a fresh interpreter: the C++
# BlockManager, the decode attention op against a plain PyTorch reference, and,
# when the setup.py build is importable too, the same bindings and ops as it.
# Exits 0 with a message when cmake is absent.
#
#   PYTHON=...           interpreter whose torch to build against
#                        (default: .venv/bin/python if present, else python3)
#   JOBS=N               parallel compile jobs (default 2)
#   CMAKE_CHECK_CUDA=... MINI_PAGED_ATTN_WITH_CUDA for the build (default OFF)
#   CMAKE_CHECK_BUILD_DIR=dir  build there and keep it (a rerun is incremental)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

CMAKE="${CMAKE:-$(command -v cmake || true)}"
if [[ -z "$CMAKE" ]]; then
  echo "check_cmake_build: cmake not found, skipping the CMake build check"
  exit 0
fi
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PYTHON="$(command -v "$PYTHON")"
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"  # absolute, not resolved: a venv stays a venv
GENERATOR=()
if command -v ninja >/dev/null; then
  GENERATOR=(-G Ninja)
elif [[ -x "$(dirname "$PYTHON")/ninja" ]]; then  # the ninja wheel of requirements-dev.txt
  GENERATOR=(-G Ninja "-DCMAKE_MAKE_PROGRAM=$(dirname "$PYTHON")/ninja")
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
BUILD_DIR="${CMAKE_CHECK_BUILD_DIR:-$WORK/build}"
start=$SECONDS
echo "check_cmake_build: $("$CMAKE" --version | head -n 1), ${GENERATOR[1]:-Unix Makefiles}, into $BUILD_DIR"
if ! "$CMAKE" -S "$ROOT" -B "$BUILD_DIR" "${GENERATOR[@]}" -DPython_EXECUTABLE="$PYTHON" \
       -DMINI_PAGED_ATTN_WITH_CUDA="${CMAKE_CHECK_CUDA:-OFF}" >"$WORK/configure.log" 2>&1; then
  cat "$WORK/configure.log"
  echo "check_cmake_build: FAILED (configure)"
  exit 1
fi
sed -n 's/^-- mini_paged_attn: /  /p' "$WORK/configure.log"
if ! "$CMAKE" --build "$BUILD_DIR" -j "${JOBS:-2}" >"$WORK/build.log" 2>&1; then
  tail -n 100 "$WORK/build.log"
  echo "check_cmake_build: FAILED (build)"
  exit 1
fi
shopt -s nullglob
modules=("$BUILD_DIR"/mini_paged_attn/_C*.so)
if (( ${#modules[@]} != 1 )); then
  echo "check_cmake_build: FAILED: expected one module in $BUILD_DIR/mini_paged_attn, found ${#modules[@]}"
  exit 1
fi
echo "  built $(basename "${modules[0]}") in $((SECONDS - start)) s"

# The package's Python files with the CMake-built module and no other.
mkdir -p "$WORK/pkg"
cp -r mini_paged_attn "$WORK/pkg/"
find "$WORK/pkg" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
cp "${modules[0]}" "$WORK/pkg/mini_paged_attn/"

# What a module exports: its bindings and the ops it registers.
cat >"$WORK/surface.py" <<'PY'
import json, sys
import torch
from mini_paged_attn import _C
ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("mini_paged_attn::"))
json.dump({"file": _C.__file__, "bindings": sorted(dir(_C)), "ops": ops}, open(sys.argv[1], "w"))
PY
cat >"$WORK/use.py" <<'PY'
import math, sys
import torch
import mini_paged_attn
from mini_paged_attn import _C

root = sys.argv[1]
for mod in (mini_paged_attn, _C):
    assert mod.__file__.startswith(root), f"{mod.__name__} imported from {mod.__file__}, not {root}"

bm = _C.BlockManager(8)
blocks = bm.allocate_blocks(3)
bm.increase_ref_count(blocks[0])
assert bm.get_ref_count(blocks[0]) == 2 and bm.get_num_free_blocks() == 5
bm.free_blocks(blocks)
assert bm.get_num_free_blocks() == 7 and bm.get_ref_count(blocks[0]) == 1

# Decode attention over a shuffled paged cache (GQA: 4 query heads over 2 KV heads).
g = torch.Generator().manual_seed(0)
num_blocks, block_size, kv_heads, heads, head_size = 10, 16, 2, 4, 64
k_cache = torch.randn(num_blocks, block_size, kv_heads, head_size, generator=g)
v_cache = torch.randn(num_blocks, block_size, kv_heads, head_size, generator=g)
block_tables = torch.tensor([[7, 2, 9], [4, 0, 5]], dtype=torch.int32)
context_lens = torch.tensor([40, 17], dtype=torch.int32)
q = torch.randn(2, heads, head_size, generator=g)
out = mini_paged_attn.paged_attention(q, k_cache, v_cache, block_tables, context_lens)
for s in range(2):
    n = int(context_lens[s])
    k = k_cache[block_tables[s].long()].reshape(-1, kv_heads, head_size)[:n]
    v = v_cache[block_tables[s].long()].reshape(-1, kv_heads, head_size)[:n]
    k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    p = torch.softmax(torch.einsum("hd,nhd->hn", q[s], k) / math.sqrt(head_size), dim=-1)
    ref = torch.einsum("hn,nhd->hd", p, v)
    torch.testing.assert_close(out[s], ref, rtol=1e-4, atol=1e-4)
print(f"  import ok: {_C.__file__}, BlockManager and paged_attention (cpu_isa {_C.cpu_isa()})")
PY
# A fresh interpreter started in $WORK, so that neither the repo's directory nor
# its installed build comes first on sys.path.
(cd "$WORK" && PYTHONPATH="$WORK/pkg" "$PYTHON" use.py "$WORK/pkg" \
   && PYTHONPATH="$WORK/pkg" "$PYTHON" surface.py cmake.json)

# Against the setup.py build, when the interpreter has one.
if (cd "$WORK" && "$PYTHON" surface.py setup.json) 2>/dev/null; then
  "$PYTHON" - "$WORK/cmake.json" "$WORK/setup.json" <<'PY'
import json, sys
cmake, setup = (json.load(open(p)) for p in sys.argv[1:])
for key in ("bindings", "ops"):
    a, b = set(cmake[key]), set(setup[key])
    if a != b:
        sys.exit(f"check_cmake_build: FAILED: {key} differ from {setup['file']}: "
                 f"only CMake {sorted(a - b)}, only setup.py {sorted(b - a)}")
print(f"  same {len(cmake['bindings'])} bindings and {len(cmake['ops'])} ops as {setup['file']}")
PY
else
  echo "  no setup.py build importable by $PYTHON: bindings not compared"
fi
echo "check_cmake_build: ok in $((SECONDS - start)) s"
