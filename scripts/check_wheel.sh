#!/usr/bin/env bash
# Builds a wheel, installs it (with its serve extra) and the CPU torch into a
# fresh virtualenv outside the repository, imports every module, runs one
# generate and the CLI's help: what a user of `pip install` gets, not the
# editable tree. Run by .ci/run after make test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# setuptools copies the package into build/lib* and never removes a file from
# there: clear it so that modules since moved or deleted do not ship (the
# compiled objects in build/temp* are kept and reused).
rm -rf build/lib.*
MAX_JOBS="${JOBS:-2}" "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/dist" .
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$TORCH_SPEC"
# With the serve extra (transformers, fastapi, ...), so that every module imports.
wheel=$(ls "$WORK"/dist/mini_paged_attn-*.whl)
"$WORK/venv/bin/python" -m pip install -q "${wheel}[serve]"
cd "$WORK"
"$WORK/venv/bin/python" - <<'PY'
import importlib
import pkgutil

import mini_paged_attn
from mini_paged_attn import LLM, SamplingParams

names = [m.name for m in pkgutil.walk_packages(mini_paged_attn.__path__, "mini_paged_attn.")]
for name in names:
    importlib.import_module(name)
assert "site-packages" in mini_paged_attn.__file__, mini_paged_attn.__file__
tokens = LLM(device="cpu").generate([[1, 2, 3]], SamplingParams(max_tokens=4))[0].outputs[0]
assert len(tokens.token_ids) == 4
import subprocess, sys
subprocess.run([sys.executable, "-m", "mini_paged_attn", "serve", "--help"], check=True,
               capture_output=True)
print(f"check_wheel: mini_paged_attn {mini_paged_attn.__version__} from a wheel: "
      f"{len(names)} modules import, generate works")
PY
