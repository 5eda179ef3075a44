#!/usr/bin/env bash
# Accelerator figures in one run (docs/BENCHMARKS.md §GPU, docs/RESULTS.md §vgg5 on a GPU):
#
#   bash experiments/accelerator_figures.sh OUT DATA_DIR [TRAIN_BUDGET_S]
#
# 1. Speed: experiments/gpu_benchmark.sh on the reference network (vgg5, batch 128, T1 = 250,
#    T2 = 25, symmetric EP, β = 1), float32 and mixed bfloat16, fixed steps and the adaptive
#    tolerance: OUT/bench/gpu_benchmark.jsonl (examples/s, s per 50,000-image epoch).
# 2. Training: the cifar10_vgg5 recipe (experiments/configs/cifar10_vgg5.py: geometry, normalisation,
#    augmentation, β, T1/T2, rates) on the CIFAR-10 shards in DATA_DIR: trains on
#    cifar10_train_0.npz and cifar10_train_1.npz (20,000 images), evaluates each epoch on
#    cifar10_heldout4_2000.npz (2,000 images of shard 4, never trained on). As many epochs as
#    the float32 fixed-step speed of part 1 says fit in TRAIN_BUDGET_S (default 300), the
#    cosine schedule over those epochs: OUT/train_metrics.jsonl, OUT/train.log.
# 3. OUT/summary.json: the figures of both parts.
#
# GPU_BENCH_ARGS and TRAIN_ARGS (extra --config.* flags) override the defaults, for smoke
# tests on a CPU. Needs jax, optax, flax, chex, orbax-checkpoint, absl-py, ml_collections and
# numpy (no tensorflow or tfds). Every step has its own time limit (the device query 120 s,
# the speed part BENCH_TIMEOUT_S, default 240, training TRAIN_BUDGET_S + 60), so the script
# ends within about BENCH_TIMEOUT_S + TRAIN_BUDGET_S + 200 s whatever hangs.
set -uo pipefail
OUT="$(realpath -m "${1:-accelerator_out}")"
DATA="$(realpath "${2:?DATA_DIR with the CIFAR-10 .npz shards}")"
BUDGET="${3:-300}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
mkdir -p "$OUT"
{
  date -u +%FT%TZ
  git rev-parse --short HEAD 2>/dev/null || true
  timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  timeout 120 python -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

# 1. Speed.
export GPU_BENCH_ARGS="${GPU_BENCH_ARGS:---layout=vgg5 --input_shape=32,32,3 --num_classes=10 --batch_size=128 --t1=250 --t2=25 --estimator=symmetric --beta=1.0 --steps=5}"
timeout "${BENCH_TIMEOUT_S:-240}" bash experiments/gpu_benchmark.sh "$OUT/bench" 2>&1 \
  | grep -v -i warn | tee "$OUT/bench.log"

# 2. Training, sized by the measured speed.
EPOCHS=$(timeout 60 python - "$OUT/bench/gpu_benchmark.jsonl" "$BUDGET" <<'EOF'
import json, sys
speed = None
try:
  for line in open(sys.argv[1]):
    d = json.loads(line)
    if d['dtype'] == 'float32' and float(d['flags']['tol']) == 0:
      speed = d['examples_per_s']
except (OSError, ValueError, KeyError):
  pass
budget = float(sys.argv[2])
# an epoch: 20,000 training examples (300 steps each) + 2,000 evaluated (250 steps each)
epoch_s = (20000 + 2000 * 250 / 300) / speed * 1.1 if speed else budget
print(max(1, int((budget - 60) // epoch_s)))
EOF
)
echo "training for $EPOCHS epoch(s)" | tee "$OUT/train.log"
WORK="${TMPDIR:-/tmp}/accelerator_train_$$"
timeout "$((BUDGET + 60))" python -m experiments.train --config=experiments/configs/cifar10_vgg5.py \
  --workdir="$WORK" --config.data.dataset="npz:$DATA" \
  --config.data.train_files="('cifar10_train_0.npz','cifar10_train_1.npz')" \
  --config.data.test_files="('cifar10_heldout4_2000.npz',)" \
  --config.train.epochs="$EPOCHS" --config.train.log_every_seconds=20 ${TRAIN_ARGS:-} 2>&1 \
  | grep -v -i warn | tee -a "$OUT/train.log"
cp "$WORK/metrics.jsonl" "$OUT/train_metrics.jsonl" 2>/dev/null || true

# 3. Summary.
timeout 60 python - "$OUT" <<'EOF' | tee "$OUT/summary.json"
import json, os, sys
out = sys.argv[1]
summary = {'bench': [], 'train': []}
path = os.path.join(out, 'bench', 'gpu_benchmark.jsonl')
if os.path.exists(path):
  for line in open(path):
    d = json.loads(line)
    summary['bench'].append({k: d.get(k) for k in (
        'dtype', 'examples_per_s', 's_per_cifar10_epoch', 'free_steps', 'nudged_steps',
        'compile_s', 'peak_memory_mb', 'platform')} | {'tol': d['flags']['tol'],
        'cos_vs_fp32_min': (d.get('grad_cosine_vs_fp32') or {}).get('min')})
path = os.path.join(out, 'train_metrics.jsonl')
if os.path.exists(path):
  for line in open(path):
    r = json.loads(line)
    summary['train'].append({k: r.get(k) for k in (
        'epoch', 'train_loss', 'train_accuracy', 'test_accuracy', 'examples_per_s',
        'epoch_time_s', 'train_time_s', 'free_steps_mean', 'free_residual_mean',
        'eval_free_steps_mean', 'lr')})
print(json.dumps(summary, indent=1))
EOF
