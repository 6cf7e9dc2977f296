#!/usr/bin/env bash
# Run here, before a GPU call that serves over HTTP: downloads into .whl/ the
# wheels that the server, its tests and benchmarks/bench_serving.py need and
# the device image lacks (FastAPI, uvicorn, pydantic, the openai client and
# their dependencies, for its Python 3.12), keeping .whl/ out of git. The call
# then names .whl in `carry`; gpu_check.sh installs them when it finds them.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  fastapi==0.165.0 uvicorn==0.54.0 openai==3.57.0
# The image has these already (KINDS.md's package list): a second version could
# shadow the one its other packages were installed with.
for name in annotated_doc anyio click h11 idna typing_extensions; do
  rm -f .whl/"$name"-*.whl
done
echo "serving_wheels: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl/"
