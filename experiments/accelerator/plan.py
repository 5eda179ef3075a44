r"""The accelerator run's speed stage, and the sizes of its other stages.

  python3 -m experiments.accelerator.plan bench --out=OUT/bench.jsonl --budget_s=200 \
      [--config_s=100] [--width=1] [--batches=128,256] [--t1=0 --t2=0] [--steps=3] [--peak_n=-1]
  python3 -m experiments.accelerator.plan slowest --bench=OUT/bench.jsonl   # its benchmark args
  python3 -m experiments.accelerator.plan train_flags --bench=OUT/bench.jsonl --budget_s=S \
      [--images=20000] [--heldout=2000] [--max_images=0]
  python3 -m experiments.accelerator.plan summary --out=OUT                 # OUT/summary.json
  python3 -m experiments.accelerator.plan check --out=OUT [--complete]      # what comes back

`bench` runs `experiments.benchmark` once per configuration, each in its own process under
its own time limit (`--config_s`, and never past the stage's `--budget_s`), and appends one
JSON line per configuration to `--out` as it goes: the benchmark's line (examples/s, FLOPs,
FLOP/s, utilisation, compile time, peak memory, ...) plus `config` (the configuration's axes),
`args`, `wall_s` and `s_per_cifar10_epoch` (50,000 / examples_per_s), or `error` for one that
failed or ran out of time. The networks (`NETWORKS`): vgg5 with the reference recipe
(cifar10_vgg5: T1 = 250, T2 = 25, β = 1, sync, fixed steps), VGG-13 and VGG-11 (cifar10_vgg13,
cifar10_vgg11) and the 8-conv CIFAR network (ablation_deep), each with its config's EP settings
(T1 = 60, T2 = 20, β = 0.5, async, tol 1e-5). The axes (`AXES`): batch 128 | 256, float32 |
mixed bfloat16, fixed steps | the adaptive tolerance (the config's, else 1e-4), sync | async,
sequential | vmapped nudged phases. The order (`configurations`): each network's own setting
at batch 128, then one axis changed at a time, vgg5 and VGG-13 first, then the 8-conv network
and VGG-11, then the remaining combinations; the stage stops where its budget ends. The first
bfloat16 configuration of each network also reports the gradient cosines against float32,
where three times the compile time of the network's first configuration fits its limit.

`slowest` prints the benchmark arguments of the configuration with the longest step (the
profiler trace's), `train_flags` the `--config.*` flags that size the vgg5 training run to
`--budget_s` from the measured speed of the reference configuration (`REFERENCE`, at the first
batch size measured; at least 2 epochs: fewer
training images when 2 epochs of `--images` would not fit), `summary` gathers the stages'
figures, and `check` fails unless `OUT` holds at most 8 files, at most two folders down, of
at most 16 MiB each, named in letters, digits and `._-` (what the device machine brings back),
and with `--complete` unless every stage left its figures (`EXPECTED`, the probe's step, a
measured configuration, 2 evaluated epochs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Sequence

NETWORKS = {
    'vgg5': 'experiments/configs/cifar10_vgg5.py',
    'vgg13': 'experiments/configs/cifar10_vgg13.py',
    'deep8': 'experiments/configs/ablation_deep.py',
    'vgg11': 'experiments/configs/cifar10_vgg11.py',
}
GROUPS = (('vgg5', 'vgg13'), ('deep8', 'vgg11'))
# axis: (the values; a configuration's first value is its network's own where it has one)
AXES = {
    'batch': ('128', '256'),
    'dtype': ('float32', 'bfloat16'),
    'steps': ('fixed', 'adaptive'),
    'relax_mode': ('sync', 'async'),
    'nudged_phases': ('sequential', 'vmapped'),
}
REFERENCE = {'network': 'vgg5', 'batch': '128', 'dtype': 'float32', 'steps': 'fixed',
             'relax_mode': 'sync', 'nudged_phases': 'sequential'}
LIMITS = {'files': 8, 'depth': 2, 'file_mb': 16}
EXPECTED = ('env.txt', 'device.log', 'bench.jsonl', 'trace.tar.gz', 'train.log',
            'train_metrics.jsonl', 'summary.json')
NAME = re.compile(r'^[A-Za-z0-9._-]+$')


def network_defaults(network: str) -> dict:
  """The network's own EP setting: {'steps': fixed | adaptive, 'relax_mode', 'tol'}."""
  from experiments import benchmark  # pylint: disable=g-import-not-at-top

  ep = benchmark.config_defaults(NETWORKS[network])
  tol = float(ep.get('tol', 0.0))
  return {'steps': 'adaptive' if tol > 0 else 'fixed', 'relax_mode': ep.get('relax_mode', 'sync'),
          'nudged_phases': ep.get('nudged_phases', 'sequential'), 'tol': tol or 1e-4}


def _flip(axis: str, value: str) -> str:
  a, b = AXES[axis]
  return b if value == a else a


def configurations(bases: dict, batches: Sequence[str] = AXES['batch']) -> list[dict]:
  """Every configuration in the order the stage runs them (see the module docstring).

  bases: network -> its own setting (`network_defaults`, without 'tol').
  """
  axes = dict(AXES, batch=tuple(batches))
  seen, order = set(), []

  def add(config):
    key = tuple(sorted(config.items()))
    if key not in seen:
      seen.add(key)
      order.append(config)

  for group in GROUPS:
    for axis in (None,) + tuple(axes):
      for network in group:
        base = dict(network=network, batch=axes['batch'][0], dtype='float32', **{
            k: v for k, v in bases[network].items() if k != 'tol'})
        if axis is not None:
          base[axis] = axes[axis][1] if base[axis] == axes[axis][0] else axes[axis][0]
        add(base)
  for group in GROUPS:
    for network in group:
      for values in itertools.product(*axes.values()):
        add(dict(network=network, **dict(zip(axes, values))))
  return order


def benchmark_args(config: dict, tol: float, *, width: int = 1, t1: int = 0, t2: int = 0,
                   steps: int = 3, peak_n: int = -1, compare_fp32: bool = False) -> list[str]:
  """The `experiments.benchmark` flags of a configuration."""
  args = [f'--config={NETWORKS[config["network"]]}', f'--batch_size={config["batch"]}',
          f'--dtype={config["dtype"]}',
          f'--tol={0.0 if config["steps"] == "fixed" else tol}',
          f'--relax_mode={config["relax_mode"]}', f'--nudged_phases={config["nudged_phases"]}',
          f'--steps={steps}', f'--peak_n={peak_n}', f'--width={width}']
  args += [f'--t1={t1}'] if t1 else []
  args += [f'--t2={t2}'] if t2 else []
  return args + (['--compare_fp32'] if compare_fp32 else [])


def _append(path: str, record: dict) -> None:
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(record) + '\n')


def _last_json(text: str) -> dict | None:
  for line in reversed(text.splitlines()):
    if line.startswith('{'):
      try:
        return json.loads(line)
      except ValueError:
        return None
  return None


def bench(out: str, budget_s: float, config_s: float, *, width: int = 1,
          batches: Sequence[str] = AXES['batch'], t1: int = 0, t2: int = 0, steps: int = 3,
          peak_n: int = -1, min_s: float = 15.0) -> list[dict]:
  """Runs the configurations in order until `budget_s` is spent; appends each to `out`."""
  start = time.monotonic()
  defaults = {network: network_defaults(network) for network in NETWORKS}
  compared, records, compile_s = set(), [], {}
  for config in configurations(defaults, batches):
    left = budget_s - (time.monotonic() - start)
    if left < min_s:
      print(f'bench: {left:.0f} s left of {budget_s:.0f} s; stopped before {config}', flush=True)
      break
    # The cosines compile the EP gradient twice more: only where three compilations of the
    # network's first configuration fit the configuration's limit.
    first = compile_s.get(config['network'])
    compare = (config['dtype'] == 'bfloat16' and config['network'] not in compared
               and first is not None and 3 * first < min(config_s, left))
    compared |= {config['network']} if compare else set()
    args = benchmark_args(config, defaults[config['network']]['tol'], width=width, t1=t1, t2=t2,
                          steps=steps, peak_n=peak_n, compare_fp32=compare)
    limit = min(config_s, left)
    t = time.monotonic()
    try:
      proc = subprocess.run([sys.executable, '-m', 'experiments.benchmark'] + args,
                            capture_output=True, text=True, timeout=limit)
      result = _last_json(proc.stdout) if proc.returncode == 0 else None
      error = None if result else (f'exit code {proc.returncode}: '
                                   + ' | '.join(proc.stderr.strip().splitlines()[-3:]))
    except subprocess.TimeoutExpired:
      result, error = None, f'timed out after {limit:.0f} s'
    record = dict(result or {}, config=config, args=args, wall_s=round(time.monotonic() - t, 2))
    if result and result.get('examples_per_s'):
      record['s_per_cifar10_epoch'] = round(50000 / result['examples_per_s'], 2)
      compile_s.setdefault(config['network'], result['compile_s'])
    if error:
      record['error'] = error[-2000:]
    _append(out, record)
    records.append(record)
    print('bench:', one_line(record), flush=True)
  return records


def one_line(r: dict) -> str:
  c = r['config']
  head = (f"{c['network']} b{c['batch']} {c['dtype']} {c['steps']} {c['relax_mode']} "
          f"{c['nudged_phases']}")
  if 'error' in r:
    return f"{head}: {r['error'][:300]}"
  util = r.get('utilisation')
  return (f"{head}: {r['examples_per_s']} ex/s, {r.get('s_per_cifar10_epoch')} s/epoch, "
          f"{(r.get('flops_per_s') or 0) / 1e12:.3f} TFLOP/s, utilisation "
          f"{util if util is None else round(util, 4)}, steps {r['free_steps']}/"
          f"{r['nudged_steps']}, compile {r['compile_s']} s, peak {r['peak_memory_mb']} MB")


def read_bench(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def slowest(records: Sequence[dict]) -> list[str] | None:
  """The benchmark args of the measured configuration with the longest median step."""
  done = [r for r in records if 'error' not in r and r.get('step_s_median')]
  if not done:
    return None
  args = max(done, key=lambda r: r['step_s_median'])['args']
  return [a for a in args if a != '--compare_fp32']


def train_flags(records: Sequence[dict], budget_s: float, *, images: int = 20000,
                heldout: int = 2000, min_epochs: int = 2, max_images: int = 0,
                max_epochs: int = 0, startup_s: float = 30.0) -> dict:
  """Epochs and training images of the vgg5 run that fit `budget_s` (see the docstring).

  An epoch takes `1.1 (n + heldout T1 / (T1 + 2 T2)) / speed` (training steps, then the
  held-out images' free phases, 10% over), after `startup_s` and two compilations (the train
  and eval steps) of the reference configuration's `compile_s`.
  Returns {'epochs', 'train_subset' (0: all), 'examples_per_s', 'epoch_s'}.
  """
  ref = next((r for r in records if 'error' not in r and all(
      r.get('config', {}).get(k) == v for k, v in REFERENCE.items() if k != 'batch')), None)
  n = min(images, max_images) if max_images else images
  if ref is None or not ref.get('examples_per_s'):
    return {'epochs': min_epochs, 'train_subset': min(n, 2560), 'examples_per_s': None,
            'epoch_s': None}
  speed = ref['examples_per_s']
  flags = ref['flags']
  eval_share = flags['t1'] / (flags['t1'] + 2 * flags['t2'])
  available = budget_s - startup_s - 2 * ref['compile_s']
  epoch_s = 1.1 * (n + heldout * eval_share) / speed
  epochs = max(min_epochs, int(available // epoch_s)) if available > 0 else min_epochs
  epochs = min(epochs, max(max_epochs, min_epochs)) if max_epochs else epochs
  if epochs * epoch_s > available:  # fewer images, so that min_epochs fit
    n = max(256, int((max(available, 0.0) / epochs / 1.1) * speed - heldout * eval_share))
    n = min(n, images)
    epoch_s = 1.1 * (n + heldout * eval_share) / speed
  return {'epochs': epochs, 'train_subset': 0 if n >= images else n,
          'examples_per_s': speed, 'epoch_s': round(epoch_s, 1)}


def summary(out: str) -> dict:
  """The figures of every stage found in `out` (bench.jsonl, env.txt, train_metrics.jsonl)."""
  keys = ('examples_per_s', 's_per_cifar10_epoch', 'flops_per_s', 'utilisation',
          'utilisation_datasheet', 'matmul_peak_flops_per_s', 'free_steps', 'nudged_steps',
          'compile_s', 'peak_memory_mb', 'step_s_median', 'error')
  bench_rows = []
  for r in read_bench(os.path.join(out, 'bench.jsonl')):
    row = dict(r['config'], **{k: r.get(k) for k in keys if k in r})
    if 'flops' in r and r['flops']:
      row['flops_per_step'] = r['flops']['total']
    cos = (r.get('grad_cosine_vs_fp32') or {}).get('min')
    if cos is not None:
      row['cos_vs_fp32_min'] = cos
    bench_rows.append(row)
  train = []
  path = os.path.join(out, 'train_metrics.jsonl')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        if line.strip():
          r = json.loads(line)
          train.append({k: r.get(k) for k in (
              'epoch', 'step', 'train_loss', 'train_accuracy', 'test_accuracy', 'examples_per_s',
              'epoch_time_s', 'train_time_s', 'free_steps_mean', 'eval_free_steps_mean', 'lr')})
  env = ''
  if os.path.exists(os.path.join(out, 'env.txt')):
    with open(os.path.join(out, 'env.txt'), encoding='utf-8') as f:
      env = f.read()
  return {'env': env.splitlines()[:40], 'bench': bench_rows, 'train': train}


def check(out: str) -> list[str]:
  """What in `out` would not come back from the device machine (empty: all of it)."""
  problems, files = [], []
  for root, dirs, names in os.walk(out):
    rel = os.path.relpath(root, out)
    depth = 0 if rel == '.' else rel.count(os.sep) + 1
    for name in dirs + names:
      if not NAME.match(name):
        problems.append(f'{os.path.join(rel, name)}: a name with other characters than '
                        'letters, digits and ._-')
    for name in names:
      path = os.path.join(root, name)
      files.append(path)
      if depth > LIMITS['depth']:
        problems.append(f'{os.path.relpath(path, out)}: more than {LIMITS["depth"]} folders down')
      if os.path.getsize(path) > LIMITS['file_mb'] * 2**20:
        problems.append(f'{os.path.relpath(path, out)}: over {LIMITS["file_mb"]} MiB')
  if len(files) > LIMITS['files']:
    problems.append(f'{len(files)} files, more than {LIMITS["files"]}')
  return problems


def missing(out: str, min_epochs: int = 2) -> list[str]:
  """The stages whose figures are not in `out` (empty: every stage left them)."""
  problems = [f'{name}: missing' for name in EXPECTED
              if not os.path.exists(os.path.join(out, name))]
  if not os.path.exists(os.path.join(out, 'env.txt')):
    return problems
  with open(os.path.join(out, 'env.txt'), encoding='utf-8') as f:
    if '"examples_per_s"' not in f.read():
      problems.append('env.txt: no EP step of the probe')
  if not [r for r in read_bench(os.path.join(out, 'bench.jsonl')) if 'error' not in r]:
    problems.append('bench.jsonl: no configuration measured')
  epochs = summary(out)['train']
  if len([r for r in epochs if r.get('test_accuracy') is not None]) < min_epochs:
    problems.append(f'train_metrics.jsonl: fewer than {min_epochs} evaluated epochs')
  return problems


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog='python3 -m experiments.accelerator.plan',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('command', choices=('bench', 'slowest', 'train_flags', 'summary', 'check'))
  p.add_argument('--out', default='')
  p.add_argument('--bench', default='')
  p.add_argument('--budget_s', type=float, default=200.0)
  p.add_argument('--config_s', type=float, default=100.0)
  p.add_argument('--width', type=int, default=1)
  p.add_argument('--batches', default='128,256')
  p.add_argument('--t1', type=int, default=0, help="0: each config's own")
  p.add_argument('--t2', type=int, default=0, help="0: each config's own")
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--peak_n', type=int, default=-1)
  p.add_argument('--images', type=int, default=20000)
  p.add_argument('--heldout', type=int, default=2000)
  p.add_argument('--max_images', type=int, default=0)
  p.add_argument('--max_epochs', type=int, default=0)
  p.add_argument('--complete', action='store_true',
                 help='check: also that every stage left its figures')
  args = p.parse_args(argv)
  if args.command == 'bench':
    bench(args.out, args.budget_s, args.config_s, width=args.width,
          batches=tuple(b for b in args.batches.split(',') if b), t1=args.t1, t2=args.t2,
          steps=args.steps, peak_n=args.peak_n)
  elif args.command == 'slowest':
    found = slowest(read_bench(args.bench))
    print(shlex.join(found) if found else '')
  elif args.command == 'train_flags':
    plan = train_flags(read_bench(args.bench), args.budget_s, images=args.images,
                       heldout=args.heldout, max_images=args.max_images,
                       max_epochs=args.max_epochs)
    print(f'train plan: {plan}', file=sys.stderr)
    flags = [f'--config.train.epochs={plan["epochs"]}',
             f'--config.optim.decay_epochs={plan["epochs"]}']
    if plan['train_subset']:
      flags.append(f'--config.data.train_subset={plan["train_subset"]}')
    print(' '.join(flags))
  elif args.command == 'summary':
    result = summary(args.out)
    with open(os.path.join(args.out, 'summary.json'), 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1)
    for row in result['bench']:
      print(row)
    for row in result['train']:
      print(row)
  else:
    problems = check(args.out) + (missing(args.out) if args.complete else [])
    for problem in problems:
      print('check:', problem)
    if problems:
      sys.exit(1)
    print(f'check: {args.out} comes back whole')


if __name__ == '__main__':
  main()
