#!/usr/bin/env bash
# Issue 15's GPU rows in one go, for a session that is lent a GPU (the device tool's `run`): the benchmark's CUDA
# rows (batch-1 latency at 256/512/1024² next to the paper's Table 1; fp16) and the worker path's images/s at 512²
# with muse (goal 2,000/s; decode and encode on 1 vs DEVICE_CODEC_THREADS threads). Writes the tables to $OUT.
#   bash scripts/gpu_speed.sh                       # on the GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash scripts/gpu_speed.sh    # the same steps at toy sizes on a CPU (a dry run)
set -euo pipefail
out=${OUT:-runs/gpu_speed}
device=${DEVICE:-cuda}
threads=${DEVICE_CODEC_THREADS:-$(nproc)}
python=${PYTHON:-python}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
if [ -n "${QUICK:-}" ]; then
  bench_args=(--quick) worker_args=(--size 64 --jobs 16 --batch 8)
else
  bench_args=() worker_args=(--size 512 --jobs 1024 --batch 64)
fi
$python -m bench.bench --device "$device" "${bench_args[@]}" --json "$out/bench.json" 2>&1 | tee "$out/bench.txt"
$python -m bench.worker --device "$device" "${worker_args[@]}" --codec-threads "1,$threads" 2>&1 \
  | tee "$out/worker.txt"
