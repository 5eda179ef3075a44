r"""Benchmark harness: compile and time full training steps on one batch, print one JSON line.

  python -m experiments.benchmark --layout=32,M,64,M,128,M --input_shape=32,32,3 \
      --num_classes=10 --batch_size=64 --t1=30 --t2=10 --estimator=symmetric --tol=0 \
      --steps=5 [--dtype=float32|bfloat16] [--mode=ep|bptt] [--compare_fp32] \
      [--state_dtype=float32|bfloat16] [--config=experiments/configs/cifar10_vgg13.py] \
      [--peak_n=N] [--trace_dir=DIR] [--solver=plain|anderson] [--memory=5]

The defaults are the line above. `--config=FILE[:ARG]` takes the network (`config.model`:
layout, dense widths, readout, activation, kernel sizes, paddings, pool ties, skip links) and
the EP settings (`config.ep`: estimator, β, T1, T2, tol, relaxation mode, nudged phases) of an
experiment config, on `--input_shape` / `--num_classes`; flags given on the command line win.
The parameters are PyTorch's default init either way (a config's data-dependent init is not
run: it changes the values, not the work). One step is what training does: for `--mode=ep` the free
phase, the estimator's nudged phases (two for `symmetric`), the EP contrast and the optax update
(SGD, momentum 0.9, weight decay 3e-4, per-layer rates, cosine schedule: the reference recipe);
for `--mode=bptt` backpropagation through `--t1` unrolled free steps and the same update.

The printed JSON line (the contract other tools parse) has at least:

  examples_per_s   batch_size / median step time (wall clock, after compilation)
  compile_s        time to lower and compile the step and run it once (the first run also
                   allocates and warms up; `lower_compile_s` is the compilation alone)
  free_steps       free-phase steps of the last timed step (T1 when --tol=0)
  peak_memory_mb   the device's peak bytes in use where the backend reports it (GPU), else the
                   process's peak resident set size (ru_maxrss; includes the compiler's peak)

and the work and speed of the step (EP only; null for BPTT):

  flops            `ep_jax.flops.train_step_flops` of the network at the steps the last timed
                   step took: {free, nudged, contrast, readout, total} (the convolutions and
                   matmuls, 2 per multiply-add)
  flops_per_s      flops.total / median step time
  matmul_peak_flops_per_s  the best of `--peak_reps` `N x N x N` matrix products in the step's
                   compute dtype (float32, or bfloat16 operands accumulated in float32), timed
                   in the same process (`--peak_n`; 0 skips it)
  utilisation      flops_per_s / matmul_peak_flops_per_s
  datasheet_peak_flops_per_s, utilisation_datasheet   against the vendor's dense tensor-core
                   figure for the device (`DATASHEET_PEAKS`; float32 runs at the TF32 rate,
                   XLA's default for float32 convolutions and matmuls on these GPUs), null
                   elsewhere

plus `step_s` (every timed step), `step_s_median`, `nudged_steps`, the final residuals
`free_residual` and `nudged_residual` (the largest over the nudged phases), `solver`,
`peak_rss_mb`,
`device_peak_mb` (null on CPU), `compiled_temp_mb` and `compiled_memory` (XLA's
`memory_analysis()` of the compiled step: temporaries, arguments, outputs, code; the most
meaningful number for comparing EP with BPTT, since EP's relaxation is a while loop whose
buffers do not depend on T), the flags, and the platform.

`--dtype=bfloat16` is the mixed-precision relaxation (`EPConfig.compute_dtype`): convolutions
and matmuls round their operands to bfloat16 and accumulate in float32; states, the EP contrast
and the gradient stay float32. `--state_dtype=bfloat16` instead keeps the states themselves in
bfloat16 (everything in bfloat16 but the parameters). With `--compare_fp32`, also
`grad_cosine_vs_fp32`: per-group cosines between the EP gradient of that precision and the
all-float32 one on the same batch and parameters, and their minimum.

With `--trace_dir=DIR` the timed steps run under `jax.profiler.trace(DIR)` (a TensorBoard /
Perfetto trace of them).

Environment: XLA_FLAGS and the number of host threads are recorded in the output; the harness
does not change them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Sequence


# Dense tensor-core FLOP/s of the vendor's datasheets, by a name in `device_kind` and the step's
# compute dtype (float32: TF32, which XLA uses for float32 convolutions and matmuls by default).
DATASHEET_PEAKS = {
    'H200': {'bfloat16': 989e12, 'float32': 495e12},
    'H100': {'bfloat16': 989e12, 'float32': 495e12},
    'A100': {'bfloat16': 312e12, 'float32': 156e12},
}
# The matrix product of the peak measurement: N on an accelerator, on a CPU.
PEAK_N = {'gpu': 8192, 'cpu': 1024}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m experiments.benchmark',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--config', default='',
                 help='FILE[:ARG]: the network and EP settings of an experiment config')
  p.add_argument('--layout', default='32,M,64,M,128,M')
  p.add_argument('--input_shape', default='32,32,3', help='H,W,C')
  p.add_argument('--num_classes', type=int, default=10)
  p.add_argument('--dense', default='', help='hidden dense widths, comma separated')
  p.add_argument('--width', type=int, default=1,
                 help="every conv layer's channels divided by N (a preset keeps its paddings)")
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--t1', type=int, default=30, help='free-phase steps (limit when tol > 0)')
  p.add_argument('--t2', type=int, default=10, help='steps of each nudged phase')
  p.add_argument('--estimator', default='symmetric',
                 choices=('one_sided', 'random_sign', 'symmetric', 'holomorphic'))
  p.add_argument('--beta', type=float, default=1.0)
  p.add_argument('--tol', type=float, default=0.0, help='0: fixed step counts')
  p.add_argument('--relax_mode', default='sync', choices=('sync', 'async'))
  p.add_argument('--nudged_phases', default='sequential', choices=('sequential', 'vmapped'),
                 help="a stencil's nudged phases one after the other, or vmapped over β_k")
  p.add_argument('--solver', default='plain', choices=('plain', 'anderson'),
                 help='how every relaxation iterates its sweep (relaxation.Solver)')
  p.add_argument('--memory', type=int, default=3, help="Anderson's memory m")
  p.add_argument('--activation', default='hard_sigmoid')
  p.add_argument('--steps', type=int, default=5, help='timed training steps')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                 help='compute dtype of the relaxation (bfloat16: mixed precision)')
  p.add_argument('--state_dtype', default='float32', choices=('float32', 'bfloat16'),
                 help='dtype of the states (parameters stay float32)')
  p.add_argument('--mode', default='ep', choices=('ep', 'bptt'))
  p.add_argument('--compare_fp32', action='store_true',
                 help='also report the gradient cosine against all-float32')
  p.add_argument('--compile_only', action='store_true',
                 help='compile and report memory only (no step is run; examples_per_s null)')
  p.add_argument('--data', default='random', choices=('random', 'digits'),
                 help="random: uniform images, random labels; digits: the first --batch_size "
                      "images of the embedded 8x8 digits (needs --input_shape=8,8,1)")
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--peak_n', type=int, default=-1,
                 help='N of the N x N x N matmul peak (-1: %s by backend; 0: not measured)'
                      % PEAK_N)
  p.add_argument('--peak_reps', type=int, default=10, help='timed matmuls of the peak')
  p.add_argument('--trace_dir', default='', help='a jax.profiler trace of the timed steps')
  return p


# Config fields read by `--config`: flag <- config.ep field.
_EP_FIELDS = {'estimator': 'estimator', 'beta': 'beta', 't1': 'free_steps', 't2': 'nudged_steps',
              'tol': 'tol', 'relax_mode': 'mode', 'nudged_phases': 'nudged_phases'}


def config_defaults(path: str) -> dict:
  """The flag defaults `--config=path` sets (the EP settings and the activation), and under
  `experiment` the config itself (its model section builds the network)."""
  from ep_jax.app import cli  # pylint: disable=g-import-not-at-top  (ml_collections)

  config = cli.ConfigFileParser(name='config').parse(path)
  out = {flag: config.ep.get(field) for flag, field in _EP_FIELDS.items()
         if config.ep.get(field) is not None}
  out['activation'] = config.model.activation
  out['experiment'] = config
  return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = _parser()
  args = p.parse_args(argv)
  if args.config:
    defaults = config_defaults(args.config)
    experiment = defaults.pop('experiment')
    p.set_defaults(**defaults)
    args = p.parse_args(argv)
    args.experiment = experiment
  return args


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(t) for t in text.split(',') if t.strip())


def _mb(nbytes) -> float | None:
  return None if nbytes is None else round(float(nbytes) / 2**20, 3)


def peak_rss_mb() -> float:
  """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return _mb(peak if sys.platform == 'darwin' else peak * 1024)


def compiled_memory(compiled) -> dict | None:
  """XLA's memory analysis of a compiled executable, in MiB (None if unavailable)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - backends without it raise various errors
    return None
  if m is None:
    return None
  fields = ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
            'alias_size_in_bytes', 'generated_code_size_in_bytes')
  out = {}
  for f in fields:
    value = getattr(m, f, None)
    if value is not None:
      out[f.replace('_size_in_bytes', '_mb')] = _mb(value)
  return out or None


def device_peak_mb(device) -> float | None:
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001
    return None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return _mb(stats['peak_bytes_in_use'])


def make_spec(args: argparse.Namespace):
  """The network of the flags, or of `--config`'s model section."""
  from ep_jax import network

  if getattr(args, 'experiment', None) is None:
    return network.make_spec(narrowed(args.layout, args.width),
                             input_shape=_ints(args.input_shape), num_classes=args.num_classes,
                             dense=_ints(args.dense), activation=args.activation,
                             paddings=_preset_paddings(args.layout, ()))
  import types  # pylint: disable=g-import-not-at-top

  from ep_jax.app import build  # pylint: disable=g-import-not-at-top

  config = args.experiment
  model = config.model
  model.paddings = _preset_paddings(model.layout, tuple(model.get('paddings', ())))
  model.layout = narrowed(model.layout, args.width)
  info = types.SimpleNamespace(input_shape=_ints(args.input_shape),
                               num_classes=args.num_classes)
  return build.build_spec(config, info, activation=args.activation)


def _preset_paddings(layout: str, paddings: tuple) -> tuple:
  """`paddings`, else the preset's own (`network.PRESET_PADDINGS`), which a narrowed layout
  string no longer names."""
  from ep_jax import network

  return tuple(paddings) or network.PRESET_PADDINGS.get(layout.strip().lower(), ())


def narrowed(layout: str, width: int) -> str:
  """`layout` (or a preset's) with every conv layer's channels divided by `width` (at least 1)."""
  if width <= 1:
    return layout
  from experiments.configs import vgg_recipe  # pylint: disable=g-import-not-at-top

  return vgg_recipe.narrowed(layout, width)


def build(args):
  """Spec, parameters, optimiser, random batch and the (unjitted) step function."""
  import jax
  import jax.numpy as jnp
  import optax

  from ep_jax import network, optim, reference_grads, relaxation, train_step
  from ep_jax.estimators import EPConfig

  spec = make_spec(args)
  key = jax.random.PRNGKey(args.seed)
  pkey, xkey, ykey, skey = jax.random.split(key, 4)
  params = network.init_params(spec, pkey)
  groups = len(network.synapse_names(spec))
  rates = ([0.25, 0.15, 0.1, 0.08] + [0.05] * groups)[:groups - 1] + [0.05]
  tx = optim.make_optimizer(spec, params, learning_rates=rates, momentum=0.9,
                            weight_decay=3e-4, schedule='cosine', total_steps=1000,
                            eta_min=1e-5)
  state = train_step.create_train_state(params, tx, skey)
  if args.data == 'digits':
    from ep_jax.app import data  # pylint: disable=g-import-not-at-top
    train_split, _, info = data.load_dataset('digits')
    if tuple(spec.input_shape) != tuple(info.input_shape) or spec.num_classes != 10:
      raise ValueError(f'--data=digits needs --input_shape=8,8,1 --num_classes=10, got '
                       f'{spec.input_shape} and {spec.num_classes}')
    batch = {'image': jnp.asarray(data.normalize(train_split.images[:args.batch_size], info)),
             'label': jnp.asarray(train_split.labels[:args.batch_size])}
  else:
    batch = {'image': jax.random.uniform(xkey, (args.batch_size,) + spec.input_shape),
             'label': jax.random.randint(ykey, (args.batch_size,), 0, spec.num_classes)}
  ep = EPConfig(estimator=args.estimator, beta=args.beta, free_steps=args.t1,
                nudged_steps=args.t2, tol=args.tol, mode=args.relax_mode,
                compute_dtype=None if args.dtype == 'float32' else args.dtype,
                nudged_phases=args.nudged_phases,
                solver=(None if args.solver == 'plain'
                        else relaxation.Solver(args.solver, memory=args.memory)))
  state_dtype = jnp.bfloat16 if args.state_dtype == 'bfloat16' else None

  if args.mode == 'ep':
    step_fn = train_step.make_train_step(spec, ep, tx, state_dtype=state_dtype)
  else:
    if args.dtype != 'float32' or args.state_dtype != 'float32':
      raise ValueError('--mode=bptt runs in float32 only')

    def step_fn(state, batch):
      grads = reference_grads.bptt_gradient(spec, state.params, batch['image'],
                                            {'label': batch['label']}, steps=args.t1,
                                            mode=args.relax_mode)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      metrics = {'free_steps': jnp.asarray(args.t1, jnp.float32),
                 'nudged_steps': jnp.zeros((), jnp.float32),
                 'grad_norm': optax.tree.norm(grads)}
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return spec, ep, tx, state, batch, step_fn


def grad_cosines(args, spec, ep, params, batch) -> dict:
  """Per-group cosine between the EP gradient at `args`' precision and the all-float32 one."""
  import jax
  import jax.numpy as jnp

  from ep_jax import gdu
  from ep_jax.estimators import ep_gradient

  def grads(dtype, compute_dtype):
    fn = jax.jit(lambda p, x, y: ep_gradient(
        spec, p, x.astype(dtype), {'label': y}, beta=ep.beta, estimator=ep.estimator,
        free_steps=ep.free_steps, nudged_steps=ep.nudged_steps, tol=ep.tol, mode=ep.mode,
        rng=jax.random.PRNGKey(0), state_dtype=dtype, compute_dtype=compute_dtype).grads)
    return fn(params, batch['image'], batch['label'])

  low = grads(jnp.bfloat16 if args.state_dtype == 'bfloat16' else jnp.float32,
              ep.compute_dtype)
  ref = grads(jnp.float32, None)
  # A group whose float32 gradient is zero has no cosine (None).
  per_group = {group: None if stats['cos'] is None else round(stats['cos'], 6)
               for group, stats in gdu.compare(low, ref, spec).items() if group != gdu.ALL}
  defined = [c for c in per_group.values() if c is not None]
  return {'per_group': per_group, 'min': min(defined) if defined else None}


def _trace(trace_dir: str):
  import contextlib  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  return jax.profiler.trace(trace_dir) if trace_dir else contextlib.nullcontext()


def matmul_peak(dtype: str = 'float32', n: int = 1024, reps: int = 10) -> float:
  """FLOP/s of the fastest of `reps` `n x n x n` products (after two warm-ups) in `dtype`
  (bfloat16: operands in bfloat16, accumulated in float32, as the mixed-precision step)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(kb, (n, n), jnp.float32).astype(dtype)
  product = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  for _ in range(2):
    product(a, b).block_until_ready()
  best = float('inf')
  for _ in range(max(1, reps)):
    t = time.perf_counter()
    product(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def datasheet_peak(device_kind: str, dtype: str) -> float | None:
  """The dense tensor-core FLOP/s of `DATASHEET_PEAKS` for a device, or None."""
  for name, peaks in DATASHEET_PEAKS.items():
    if name.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


def speed(args: argparse.Namespace, spec, metrics, median: float | None,
          device_kind: str) -> dict:
  """The step's FLOPs, FLOP/s, the matmul peak and the utilisations (see the docstring)."""
  import jax  # pylint: disable=g-import-not-at-top

  from ep_jax import flops  # pylint: disable=g-import-not-at-top

  out = dict.fromkeys(('flops', 'flops_per_s', 'matmul_peak_flops_per_s', 'utilisation',
                       'datasheet_peak_flops_per_s', 'utilisation_datasheet'))
  if args.mode != 'ep' or metrics is None:
    return out
  count = flops.train_step_flops(spec, args.batch_size,
                                 free_steps=float(metrics['free_steps']),
                                 nudged_steps=float(metrics['nudged_steps']),
                                 estimator=args.estimator, mode=args.relax_mode)
  out['flops'] = {k: round(v) for k, v in count._asdict().items()}
  out['flops_per_s'] = round(count.total / median, 1)
  n = args.peak_n if args.peak_n >= 0 else PEAK_N.get(jax.default_backend(), PEAK_N['cpu'])
  if n:
    peak = matmul_peak(args.dtype, n, args.peak_reps)
    out['matmul_peak_flops_per_s'] = round(peak, 1)
    out['utilisation'] = round(out['flops_per_s'] / peak, 5)
  sheet = datasheet_peak(device_kind, args.dtype) if jax.default_backend() == 'gpu' else None
  if sheet:
    out['datasheet_peak_flops_per_s'] = sheet
    out['utilisation_datasheet'] = round(out['flops_per_s'] / sheet, 5)
  return out


def run(argv: Sequence[str] | None = None) -> dict:
  """Runs the benchmark and returns the result dict (also what `main` prints)."""
  args = parse_args(argv)
  import jax

  spec, ep, tx, state, batch, step_fn = build(args)
  jitted = jax.jit(step_fn, donate_argnums=0)

  t0 = time.perf_counter()
  compiled = jitted.lower(state, batch).compile()
  lower_compile_s = time.perf_counter() - t0
  metrics = None
  if not args.compile_only:
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
  compile_s = time.perf_counter() - t0

  times = []
  with _trace(args.trace_dir):
    for _ in range(0 if args.compile_only else args.steps):
      t = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - t)
  median = statistics.median(times) if times else None

  device = jax.devices()[0]
  dev_peak = device_peak_mb(device)
  rss = peak_rss_mb()
  memory = compiled_memory(compiled)
  result = {
      'examples_per_s': round(args.batch_size / median, 3) if times else None,
      'compile_s': round(compile_s, 3),
      'lower_compile_s': round(lower_compile_s, 3),
      'free_steps': None if metrics is None else int(metrics['free_steps']),
      'nudged_steps': None if metrics is None else float(metrics['nudged_steps']),
      'free_residual': None if metrics is None else float(metrics.get('free_residual', 0.0)),
      'nudged_residual': (None if metrics is None or 'layer_nudged_residual' not in metrics
                          else float(metrics['layer_nudged_residual'].max())),
      'solver': args.solver,
      'peak_memory_mb': dev_peak if dev_peak is not None else rss,
      'peak_rss_mb': rss,
      'device_peak_mb': dev_peak,
      'compiled_temp_mb': (memory or {}).get('temp_mb'),
      'compiled_memory': memory,
      'step_s_median': None if median is None else round(median, 5),
      'step_s': [round(t, 5) for t in times],
      'grad_norm': None if metrics is None else float(metrics['grad_norm']),
      'mode': args.mode,
      'network': {'layout': spec.layout, 'dense': spec.dense, 'skips': spec.skips,
                  'input_shape': spec.input_shape, 'num_classes': spec.num_classes},
      'dtype': args.dtype,
      'state_dtype': args.state_dtype,
      'flags': {k: v for k, v in vars(args).items() if k != 'experiment'},
      'platform': {'backend': jax.default_backend(), 'device': str(device.device_kind),
                   'jax': jax.__version__, 'cpu_count': os.cpu_count(),
                   'machine': platform.machine(),
                   'xla_flags': os.environ.get('XLA_FLAGS', '')},
      'date': datetime.datetime.now().isoformat(timespec='seconds'),
  }
  result.update(speed(args, spec, metrics, median, str(device.device_kind)))
  if args.compare_fp32 and not args.compile_only:
    result['grad_cosine_vs_fp32'] = grad_cosines(args, spec, ep, state.params, batch)
  return result


def main(argv: Sequence[str] | None = None) -> None:
  print(json.dumps(run(argv)), flush=True)


if __name__ == '__main__':
  main()
