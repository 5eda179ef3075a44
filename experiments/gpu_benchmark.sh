#!/usr/bin/env bash
# The GPU speed figures of docs/BENCHMARKS.md, as one prepared script.
#
#   bash experiments/gpu_benchmark.sh [OUT_DIR]
#
# The reference recipe network (vgg5: 128,M,256,M,512,M,512,M on 32x32x3, paddings 1,1,1,0,
# readout 512 -> 10), batch
# 128, T1 = 250, T2 = 25, symmetric EP, beta 1 (the recipe's), one training step = free + two nudged
# phases + the optax update; float32 and mixed bfloat16 (--dtype=bfloat16), each with fixed
# step counts (--tol=0) and with the adaptive tolerance (--tol=1e-4, T1/T2 as limits; random
# inputs, so the steps used are indicative only). Each line of OUT_DIR/gpu_benchmark.jsonl is
# the harness's JSON plus `s_per_cifar10_epoch` = 50000 / examples_per_s. Needs only jax,
# optax, flax, chex, numpy (no tensorflow, tfds or ml_collections). Time per configuration on
# a GPU: not yet measured (each is limited to BENCH_CONFIG_TIMEOUT_S).
set -euo pipefail
OUT="${1:-${OUT:-gpu_bench_out}}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # absolute: the script runs from the repository root
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 120 python -c "import jax; print('devices:', jax.devices())" | tee "$OUT/devices.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/devices.txt" || true
COMMON="${GPU_BENCH_ARGS:---layout=vgg5 --input_shape=32,32,3 --num_classes=10 --batch_size=128 --t1=250 --t2=25 --estimator=symmetric --beta=1.0 --steps=10}"  # GPU_BENCH_ARGS: override (smoke tests)
: > "$OUT/gpu_benchmark.jsonl"
for dtype in float32 bfloat16; do
  for tol in 0 1e-4; do
    extra=""
    [ "$dtype" = bfloat16 ] && extra="--compare_fp32"
    # Each configuration has its own time limit (BENCH_CONFIG_TIMEOUT_S, default 150 s).
    line=$(timeout "${BENCH_CONFIG_TIMEOUT_S:-150}" python -m experiments.benchmark $COMMON \
           --dtype=$dtype --tol=$tol $extra | tail -n 1) || { echo "$dtype tol $tol: failed or timed out"; continue; }
    python - "$line" >> "$OUT/gpu_benchmark.jsonl" <<'EOF'
import json, sys
d = json.loads(sys.argv[1])
d['s_per_cifar10_epoch'] = round(50000 / d['examples_per_s'], 2) if d['examples_per_s'] else None
print(json.dumps(d))
EOF
    tail -n 1 "$OUT/gpu_benchmark.jsonl" | python -c "
import json, sys
d = json.loads(sys.stdin.read())
print(d['dtype'], 'tol', d['flags']['tol'], 'ex/s', d['examples_per_s'], 's/epoch', d['s_per_cifar10_epoch'],
      'free steps', d['free_steps'], 'compile', d['compile_s'], 'peak MB', d['peak_memory_mb'],
      'cos', (d.get('grad_cosine_vs_fp32') or {}).get('min'))"
  done
done
