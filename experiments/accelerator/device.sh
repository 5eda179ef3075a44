#!/usr/bin/env bash
# The accelerator run: the one command the device machine runs (docs/BENCHMARKS.md §6).
#
#   bash experiments/accelerator/device.sh [OUT]          # OUT: $OUT there, else ./accelerator_out
#
# Runs `python3` (the device's interpreter, which holds jax; a `python` there may not), with
# the repository on PYTHONPATH, PYTHONUNBUFFERED=1 and GPU memory not preallocated. Every stage
# has its own time limit and appends to its files in OUT as it goes, and a failed stage does
# not stop the next; the whole run ends within ACCEL_TOTAL_S (default 530 s) of its start.
#   0. OUT/env.txt (within ACCEL_PROBE_S, 60 s, before anything else): the date, nvidia-smi,
#      python / jax / jaxlib and the devices, one jitted EP step of a tiny network
#      (experiments.accelerator.probe).
#      Then the wheels in ACCEL_WHL_DIR (.whl: what the device lacks, see prepare.sh) are
#      installed into a temporary folder on PYTHONPATH (--no-index --no-deps), and the packed
#      CIFAR-10 images of ACCEL_DATA_DIR (.device_data) unpacked into a temporary folder.
#   a. OUT/bench.jsonl: the speed of the training step, one JSON line per configuration, for
#      ACCEL_BENCH_S (200 s), each configuration at most ACCEL_CONFIG_S (100 s)
#      (experiments.accelerator.plan bench: vgg5, VGG-13, then the 8-conv network and VGG-11;
#      examples/s, FLOP/s, utilisation, compile time, peak memory).
#   b. OUT/trace.tar.gz: a jax.profiler trace of 3 steps of the slowest configuration of (a)
#      (of 1 step if 3 are over 15 MiB), within ACCEL_TRACE_S (90 s; its compilation comes from
#      the cache that (a) filled).
#   c. OUT/train.log, OUT/train_metrics.jsonl: the cifar10_npz_vgg5 recipe on the 20,000
#      training images for the time left (less ACCEL_RESERVE_S, 20 s), at least 2 epochs
#      (fewer images if need be), each epoch evaluated on the 2,000 held-out images.
#   OUT/summary.json: the figures of every stage. OUT/device.log: everything printed.
# Sizes (the rehearsal's tiny run sets them): ACCEL_WIDTH (1: every conv layer's channels
# divided by it), ACCEL_BATCHES (128,256), ACCEL_T1 / ACCEL_T2 (0: each config's own), ACCEL_STEPS
# (3 timed steps a configuration), ACCEL_PEAK_N (-1: an 8192^3 matmul on a GPU), ACCEL_TRAIN_IMAGES
# (0: all), ACCEL_TRAIN_EPOCHS (0: as many as fit), TRAIN_ARGS (extra --config.* flags of the
# training run).
set -uo pipefail
START=$(date +%s)
OUT="$(realpath -m "${1:-${OUT:-accelerator_out}}")"
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
TEE=$!
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
PY=python3
TMP="$(mktemp -d)"
# A compilation cache shared by the stages: the trace of (b) reuses the executable of (a).
export JAX_COMPILATION_CACHE_DIR="$TMP/jax_cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
TOTAL=${ACCEL_TOTAL_S:-530}
# limit WANT [RESERVE]: WANT seconds, or what is left before the end less RESERVE (at least 1).
limit() {
  local left=$(( START + TOTAL - $(date +%s) - ${2:-0} ))
  local want=$1
  (( left < want )) && want=$left
  (( want < 1 )) && want=1
  echo "$want"
}
stage() { echo "== $(date -u +%T) +$(( $(date +%s) - START )) s: $*"; }

stage "0. the machine"
{
  date -u +%FT%TZ
  git rev-parse --short HEAD 2>/dev/null || echo "commit: not known here (no .git)"
  timeout 15 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv 2>&1 || echo "nvidia-smi: not available"
  PROBE_S=$(( ${ACCEL_PROBE_S:-60} - ($(date +%s) - START) ))
  timeout "$(( PROBE_S > 5 ? PROBE_S : 5 ))" $PY -m experiments.accelerator.probe \
    || echo "probe: failed or timed out (exit $?)"
} 2>&1 | tee "$OUT/env.txt"

WHL="${ACCEL_WHL_DIR:-.whl}"
if compgen -G "$WHL/*.whl" > /dev/null; then
  if timeout 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$TMP/site" "$WHL"/*.whl; then
    export PYTHONPATH="$PYTHONPATH:$TMP/site"
    echo "wheels: $(cd "$WHL" && ls ./*.whl | tr '\n' ' ')"
  else
    echo "wheels: install failed (exit $?)"
  fi
else
  echo "wheels: none in $WHL (the installed packages are used)"
fi
DATA="$TMP/cifar10"
timeout 90 $PY -m experiments.accelerator.pack unpack --src="${ACCEL_DATA_DIR:-.device_data}" \
  --out="$DATA" || echo "data: unpack failed (exit $?)"

stage "a. speed"
BENCH_S=$(limit "${ACCEL_BENCH_S:-200}" 60)
timeout "$(( BENCH_S + 30 ))" $PY -m experiments.accelerator.plan bench --out="$OUT/bench.jsonl" \
  --budget_s="$BENCH_S" --config_s="${ACCEL_CONFIG_S:-100}" --width="${ACCEL_WIDTH:-1}" \
  --batches="${ACCEL_BATCHES:-128,256}" --t1="${ACCEL_T1:-0}" --t2="${ACCEL_T2:-0}" \
  --steps="${ACCEL_STEPS:-3}" --peak_n="${ACCEL_PEAK_N:--1}" || echo "bench: exit $?"

stage "b. profiler trace"
ARGS=$(timeout 30 $PY -m experiments.accelerator.plan slowest --bench="$OUT/bench.jsonl")
if [ -n "$ARGS" ]; then
  eval "set -- $ARGS"
  echo "tracing: $*"
  TRACE_END=$(( $(date +%s) + $(limit "${ACCEL_TRACE_S:-90}" 60) ))
  for steps in 3 1; do  # one step if three do not fit into 15 MiB
    rm -rf "$TMP/trace" "$OUT/trace.tar.gz"
    timeout "$(( TRACE_END - $(date +%s) > 1 ? TRACE_END - $(date +%s) : 1 ))" $PY -m \
      experiments.benchmark "$@" --steps=$steps --peak_n=0 --trace_dir="$TMP/trace" | tail -n 1 \
      || echo "trace: failed or timed out (exit $?)"
    [ -d "$TMP/trace" ] && tar -czf "$OUT/trace.tar.gz" -C "$TMP" trace && ls -l "$OUT/trace.tar.gz"
    [ -f "$OUT/trace.tar.gz" ] && [ "$(stat -c %s "$OUT/trace.tar.gz")" -gt $(( 15 << 20 )) ] \
      || break
    echo "trace: $steps steps are over 15 MiB"
  done
else
  echo "trace: no configuration was measured"
fi

stage "c. training"
TRAIN_S=$(limit 100000 "${ACCEL_RESERVE_S:-20}")
FLAGS=$(timeout 30 $PY -m experiments.accelerator.plan train_flags --bench="$OUT/bench.jsonl" \
  --budget_s="$TRAIN_S" --max_images="${ACCEL_TRAIN_IMAGES:-0}" \
  --max_epochs="${ACCEL_TRAIN_EPOCHS:-0}")
echo "training for at most $TRAIN_S s: $FLAGS ${TRAIN_ARGS:-}"
( while sleep 10; do cp "$TMP/run/metrics.jsonl" "$OUT/train_metrics.jsonl" 2> /dev/null; done ) &
COPIER=$!
# shellcheck disable=SC2086  # FLAGS and TRAIN_ARGS are lists of flags
timeout "$TRAIN_S" $PY -m experiments.train --config=experiments/configs/cifar10_npz_vgg5.py \
  --workdir="$TMP/run" --config.data.dataset="npz:$DATA" \
  --config.data.train_files="('cifar10_train_0.npz','cifar10_train_1.npz')" \
  --config.data.test_files="('cifar10_heldout*.npz',)" --config.train.log_every_seconds=20 \
  $FLAGS ${TRAIN_ARGS:-} 2>&1 | tee -a "$OUT/train.log" || echo "training: exit $?"
kill "$COPIER" 2> /dev/null
cp "$TMP/run/metrics.jsonl" "$OUT/train_metrics.jsonl" 2> /dev/null || echo "training: no metrics"

stage "summary"
timeout 30 $PY -m experiments.accelerator.plan summary --out="$OUT" || echo "summary: exit $?"
stage "done"
rm -rf "$TMP"
exec 1>&- 2>&-
wait "$TEE"
