#!/usr/bin/env bash
# What the accelerator run carries, made here once (both folders are ignored by git):
#
#   bash experiments/accelerator/prepare.sh [CIFAR10_DIR]   # default ../shared/data/cifar10
#
# .whl/          the wheels of wheels.txt for CPython 3.12 on x86-64 Linux (pip download
#                --no-deps; fetched again only when one is missing)
# .device_data/  the CIFAR-10 images, packed (experiments.accelerator.pack: shards 0 and 1 to
#                train on, 2,000 images of shard 4 held out; packed again only when missing)
# Then prints what the working tree that travels weighs (tracked and untracked files that git
# does not ignore, plus the two folders), and fails above the device's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC="${1:-${CIFAR10_DIR:-../shared/data/cifar10}}"
PY="${PYTHON:-python3}"
WANT=$(grep -v '^#' experiments/accelerator/wheels.txt | grep .)
have_all=1
for spec in $WANT; do
  name=$(echo "${spec%%==*}" | tr 'A-Z-' 'a-z_')
  version=${spec##*==}
  compgen -G ".whl/${name}-${version}-*.whl" > /dev/null || have_all=0
done
if [ "$have_all" = 0 ]; then
  rm -rf .whl
  # shellcheck disable=SC2086  # WANT is a list of name==version
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WANT
fi
ls .whl
if ! compgen -G ".device_data/*.npy.xz" > /dev/null; then
  PYTHONPATH="$PWD" "$PY" -m experiments.accelerator.pack pack --src="$SRC" --out=.device_data
fi
ls .device_data
TREE=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -n 1 | cut -f1)
CARRIED=$(du -cb .whl .device_data | tail -n 1 | cut -f1)
TOTAL=$(( TREE + CARRIED ))
echo "travels: $(( TOTAL / 1024 / 1024 )) MiB (tree $(( TREE / 1024 )) KiB, .whl and" \
  ".device_data $(( CARRIED / 1024 )) KiB) of 64 MiB"
(( TOTAL < 64 * 1024 * 1024 )) || { echo "over the device's 64 MiB"; exit 1; }
