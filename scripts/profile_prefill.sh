#!/usr/bin/env bash
# GPU only: Nsight Compute reports of the CUDA prefill kernels on one
# bench_prefill.py shape (default 1: 4x4096, 32/8 heads, head size 128), after
# gpu_check.sh has built the extension on this machine. Writes, under $OUT,
# each kernel's .ncu-rep, its details page and its per-SASS-instruction
# source page (stall samples), and prints the details' key lines.
#
#   SHAPE=N          the bench_prefill.py --shape index
#   KERNELS="..."    kernel name regexes (default: the mma.sync and wgmma kernels)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
REP_DIR="$(mktemp -d)"
trap 'rm -rf "$REP_DIR"' EXIT
NCU="${NCU:-$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n 1)}"
if [[ -z "$NCU" ]]; then
  echo "profile_prefill: ncu not found"
  exit 1
fi
for k in ${KERNELS:-prefill_tc_kernel prefill_wgmma_kernel}; do
  # --launch-skip 1: past the first (untimed, cold) launch.
  "$NCU" --clock-control none -k "regex:$k" --launch-skip 1 --launch-count 1 --set full \
    --import-source yes -f -o "$REP_DIR/$k" \
    python3 benchmarks/bench_prefill.py --device cuda --shape "${SHAPE:-1}" >"$REP_DIR/run.log" 2>&1 \
    || { echo "ncu failed for $k:"; tail -n 20 "$REP_DIR/run.log"; continue; }
  "$NCU" --import "$REP_DIR/$k.ncu-rep" --page details >"$OUT/$k.details.txt" 2>&1
  "$NCU" --import "$REP_DIR/$k.ncu-rep" --page source --csv --print-source sass \
    >"$OUT/$k.source.csv" 2>&1
  echo "== $k"
  grep -E "Duration|Registers Per|Achieved Occupancy|Executed Ipc A|Issue Slots Busy|L2 Hit|Mem Busy|Max Bandwidth|L1/TEX Hit|Shared Memory Configuration|Dynamic Shared|One or More|No Eligible|Warp Cycles Per Issued" \
    "$OUT/$k.details.txt" | head -n 30
done
