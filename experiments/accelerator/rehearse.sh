#!/usr/bin/env bash
# The accelerator run rehearsed on this machine's CPU, at tiny sizes, on the device's stack:
#
#   bash experiments/accelerator/rehearse.sh OUT
#
# 1. A virtualenv of the device's versions (requirements-device.txt: jax 0.11.2 and what the run
#    imports) on Python 3.12 (.ci/python312.sh), in ${XDG_CACHE_HOME:-~/.cache}/ep_jax/, built
#    once per version of those pins; whatever pip pulled in that the device's image lacks
#    (device_packages.txt) is removed again. ACCEL_REHEARSE_VENV=none uses the python3 on PATH
#    instead (the test of the script does, under the project's virtualenv).
# 2. prepare.sh where .whl/ or .device_data/ is missing (ACCEL_PREPARE=0: not; the test points
#    ACCEL_WHL_DIR and ACCEL_DATA_DIR elsewhere).
# 3. device.sh into OUT with every size tiny (ACCEL_* below: 1/32 of the channels, batches 8
#    and 16, T1 = 4, T2 = 2, one timed step, 512 training images, 2 epochs) on the CPU: the
#    wheels installed as the device installs them, the data unpacked, every stage run.
# 4. plan check --complete: OUT holds what the device machine would bring back, with every
#    stage's figures. Prints the time it took.
set -euo pipefail
T0=$(date +%s)
OUT="$(realpath -m "${1:?usage: rehearse.sh OUT}")"
cd "$(dirname "$0")/../.."
HERE=experiments/accelerator
if [ "${ACCEL_REHEARSE_VENV:-}" != none ]; then
  PY312=$(bash .ci/python312.sh) || { echo "rehearse: no Python 3.12 found (the device's python3 is 3.12)"; exit 1; }
  KEY=$(cat "$HERE/requirements-device.txt" "$HERE/device_packages.txt" <("$PY312" -V) | sha256sum | cut -c1-12)
  VENV="${XDG_CACHE_HOME:-$HOME/.cache}/ep_jax/device-venv-$KEY"
  if [ ! -f "$VENV/.complete" ]; then
    echo "rehearse: building $VENV"
    rm -rf "$VENV"
    "$PY312" -m venv "$VENV"
    "$VENV/bin/python3" -m pip install -q -r "$HERE/requirements-device.txt"
    EXTRA=$("$VENV/bin/python3" - "$HERE/device_packages.txt" <<'PYEOF'
import re, subprocess, sys
norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
have = {norm(l.strip()) for l in open(sys.argv[1]) if l.strip() and not l.startswith('#')}
freeze = subprocess.run([sys.executable, '-m', 'pip', 'list', '--format=freeze'],
                        capture_output=True, text=True, check=True).stdout
names = [l.split('==')[0] for l in freeze.splitlines() if '==' in l]
print(' '.join(n for n in names if norm(n) not in have | {'pip'}))
PYEOF
)
    if [ -n "$EXTRA" ]; then
      echo "rehearse: not on the device, removed: $EXTRA"
      # shellcheck disable=SC2086
      "$VENV/bin/python3" -m pip uninstall -q -y $EXTRA
    fi
    touch "$VENV/.complete"
  fi
  export PATH="$VENV/bin:$PATH"
fi
if [ "${ACCEL_PREPARE:-1}" != 0 ] && { ! compgen -G ".whl/*.whl" > /dev/null \
    || ! compgen -G ".device_data/*.npy.xz" > /dev/null; }; then
  bash "$HERE/prepare.sh"
fi
echo "rehearse: $(python3 -c 'import sys, jax; print(sys.executable, "python", sys.version.split()[0], "jax", jax.__version__)')"
rm -rf "$OUT"
# The time limits may be raised from outside (a loaded machine: the test of the script does).
export JAX_PLATFORMS=cpu ACCEL_TOTAL_S=${ACCEL_TOTAL_S:-170} ACCEL_PROBE_S=${ACCEL_PROBE_S:-60} \
  ACCEL_BENCH_S=${ACCEL_BENCH_S:-55} ACCEL_CONFIG_S=${ACCEL_CONFIG_S:-30} \
  ACCEL_TRACE_S=${ACCEL_TRACE_S:-30} ACCEL_RESERVE_S=10 ACCEL_WIDTH=32 ACCEL_BATCHES=8,16 \
  ACCEL_T1=4 ACCEL_T2=2 ACCEL_STEPS=1 ACCEL_PEAK_N=256 ACCEL_TRAIN_IMAGES=512 ACCEL_TRAIN_EPOCHS=2
export TRAIN_ARGS="--config.model.layout=4,M,8,M,16,M,16,M \
--config.model.paddings=('SAME','SAME','SAME','VALID') --config.ep.free_steps=4 \
--config.ep.nudged_steps=2 --config.train.batch_size=32 --config.train.eval_batch_size=250"
bash "$HERE/device.sh" "$OUT" > /dev/null
python3 -m experiments.accelerator.plan check --out="$OUT" --complete
echo "rehearse: done in $(( $(date +%s) - T0 )) s; OUT holds: $(ls "$OUT" | tr '\n' ' ')"
