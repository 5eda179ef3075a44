r"""How far each learning signal moves each layer: the per-unit nudge of the nudged phase.

  python -m experiments.signal_strength --config=experiments/configs/ablation_digits.py \
      --teacher_workdir=DIR [--kappas=0.1,1] [--batch_size=64] [--out=FILE.json] [--only_teacher]
  python -m experiments.signal_strength --config=... --curvature [--signal=kd|les] [--margin=1] \
      [--out=FILE.json]

Builds the config's network at its initialisation (`model.init`, seed `config.seed`), relaxes
the free phase of `--batch_size` training examples to a residual of 1e-5 (`ep.mode`), then
one nudged phase at +β (`ep.beta`) for each signal setting: the output cost alone, LES with
`les.normalize` 'mean' and 'unit', KD with `kd.normalize` 'layer' and 'unit' (layer-wise only,
the teacher from `--teacher_workdir`), each at every κ of `--kappas`. For each layer it prints
the per-unit root-mean-square nudge `sqrt(mean (s^β_l - s^0_l)²)` (a markdown table, one row
per setting) and writes all figures to `--out` as JSON. A signal teaches a layer only as far as
it moves that layer's units, so the table shows which settings nudge every layer comparably.

With a teacher it also prints the KD targets themselves: the teacher's per-layer mean |a_l|,
input dependence (std over examples / mean |a_l|) and fraction of units at 0 or 1 on the same
examples (`--only_teacher`: those alone, without relaxing the CRNN).

`--curvature` measures instead how stiff each layer's KD regression is for its optimiser: per
hidden layer the largest Gauss-Newton eigenvalue λ_l of the per-unit KD cost on the config's
`signals.kd.layers` with respect to the layer's weights (`signals.kd_curvature`, at the same
free fixed point), the layer's rate η_l (`optim.learning_rates`) and κ_l (`signals.kappa` at
epoch 0, 0 off the KD layers), the product η_l κ_l λ_l (SGD with heavy-ball momentum μ
diverges on a quadratic where it exceeds 2 (1 + μ); Adam has no such bound) and the cap
`κ_l ≤ --margin / (η_l λ_l)`; `--out` gets the figures, and the smaller of `kappa_cap` and κ
passed as `--config.signals.kappa.per_layer` keeps every layer's product at most `--margin`.
Needs no teacher (λ does not depend on the targets). `--signal=les` measures the LES losses
instead (the config's `signals.les` settings, heads drawn as training draws them, on
`signals.les.layers`): the generalised Gauss-Newton matrix `J_lᵀ ∇²ℓ J_l` of the heads' loss.
"""

from __future__ import annotations

import copy
import json
import os

import jax
import jax.numpy as jnp
from absl import app, flags

from ep_jax import energy, feedforward, kappa, network, optim, relaxation, signals, train_step
from ep_jax.app import build, data
from ep_jax.app import train as train_lib
from experiments import cli


def settings(kappas, with_kd: bool) -> list[tuple[str, dict]]:
  """`(name, overrides of config.signals)` of every setting measured."""
  out = [('output only', {})]
  for k in kappas:
    out.append((f'LES mean κ={k:g}', {'les.enabled': True, 'les.normalize': 'mean',
                                      'kappa.init': k}))
    out.append((f'LES unit κ={k:g}', {'les.enabled': True, 'les.normalize': 'unit',
                                      'kappa.init': k}))
    if with_kd:
      out.append((f'KD layer κ={k:g}', {'kd.enabled': True, 'kd.normalize': 'layer',
                                        'kd.output': False, 'kappa.init': k}))
      out.append((f'KD unit κ={k:g}', {'kd.enabled': True, 'kd.normalize': 'unit',
                                       'kd.output': False, 'kappa.init': k}))
  return out


def teacher_activity(teacher_workdir: str, images: jax.Array) -> dict:
  """The KD targets on `images` (normalised, `(B, H, W, C)`): per layer of the BP teacher,
  `mean_abs` (mean |a_l|), `input_share`, `zero_frac` and `one_frac` (units at 0, at 1), as
  the CRNN's `layer_*` metrics (`train_step.layer_activity`)."""
  spec, params, _ = build.load_teacher(teacher_workdir)
  acts, _ = feedforward.forward(spec, params, images)
  activity = train_step.layer_activity(acts, spec.activation)
  return dict({k: [float(v) for v in a] for k, a in activity.items()},
              layers=list(spec.layer_names))


def teacher_table(activity: dict) -> str:
  names = activity['layers']
  lines = ['| teacher | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for key, label in (('mean_abs', 'mean \\|a_l\\|'), ('input_share', 'input share'),
                     ('zero_frac', 'at 0'), ('one_frac', 'at 1')):
    lines.append(f'| {label} | ' + ' | '.join(f'{v:.3f}' for v in activity[key]) + ' |')
  return '\n'.join(lines)


def measure(config, teacher_workdir: str, kappas, batch_size: int = 64,
            only_teacher: bool = False) -> dict:
  """`{'layers': names, 'rows': [{'setting', 'rms_nudge': [...]}], ...}` (see module doc)."""
  train_split, _, info = build.load_data(config)
  x = jnp.asarray(data.normalize(train_split.images[:batch_size], info))
  teacher = teacher_activity(teacher_workdir, x) if teacher_workdir else None
  if only_teacher:
    if teacher is None:
      raise ValueError('only_teacher needs a teacher_workdir')
    return {'batch_size': batch_size, 'teacher': teacher, 'rows': []}
  spec, params, free = _initial_fixed_point(config, train_split, info, x)
  batch = {'image': x, 'label': jnp.asarray(train_split.labels[:batch_size])}
  e = config.ep
  rows = []
  for name, overrides in settings(kappas, bool(teacher_workdir)):
    c = copy.deepcopy(config.signals)
    c.les.enabled = c.kd.enabled = False
    c.kappa.schedule = 'constant'
    for field, value in overrides.items():
      group, attr = field.split('.')
      c[group][attr] = value
    c.kd.teacher_workdir = teacher_workdir
    setup = build.build_signals(c, spec, num_epochs=1, rng=jax.random.PRNGKey(1))
    p = dict(params, signals=setup.trainable) if setup.trainable else params
    if setup.nudging is None:
      targets, cost_fn = {'label': batch['label']}, energy.output_cost(spec)
    else:
      targets = setup.nudging.targets(setup.frozen, p, batch, jnp.asarray(0))
      cost_fn = setup.nudging.cost
    nudged = relaxation.relax(spec, p, x, free.states, targets=targets, beta=float(e.beta),
                              cost_fn=cost_fn, max_steps=2000, tol=1e-5, mode=e.mode)
    rms = [float(jnp.sqrt(jnp.mean((b - a) ** 2))) for a, b in zip(free.states, nudged.states)]
    rows.append({'setting': name, 'rms_nudge': rms, 'nudged_residual': float(nudged.residual)})
  return {'layers': list(spec.layer_names), 'beta': float(e.beta), 'batch_size': batch_size,
          'free_residual': float(free.residual), 'free_steps': int(free.steps),
          'mean_abs_state': [float(jnp.mean(jnp.abs(s))) for s in free.states], 'rows': rows,
          'teacher': teacher}


def _initial_fixed_point(config, train_split, info, x):
  """The config's network at its initialisation and its free fixed point on `x` (residual
  1e-5, `ep.mode`): `(spec, params, free)`."""
  spec = build.build_spec(config, info)
  params = train_lib.init_model_params(train_lib.calibrated_config(config, train_split, info),
                                       spec, train_lib.init_key(config))
  free = relaxation.relax(spec, params, x, network.init_states(spec, x.shape[0]),
                          max_steps=2000, tol=1e-5, mode=config.ep.mode)
  return spec, params, free


SIGNALS = ('kd', 'les')


def _les_curvature(config, spec, params, x, labels, states) -> tuple[tuple[int, ...], list]:
  """`(LES layers, [λ_l])`: `signals.signal_curvature` of the config's LES losses (its
  `signals.les` settings and heads, drawn as training draws them), summed over its layers."""
  les_config = copy.deepcopy(config.signals)
  les_config.kd.enabled = False
  les_config.les.enabled = True
  signal_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)[2]
  setup = build.build_signals(les_config, spec, num_epochs=int(config.train.epochs),
                              rng=signal_key)
  nudging = setup.nudging
  p = dict(params, signals=setup.trainable) if setup.trainable else params
  targets = nudging.targets(setup.frozen, p, {'image': x, 'label': labels}, 0)

  def cost(s):
    return sum(nudging.les_costs(p, s, targets).values())

  return nudging.les.layers, signals.signal_curvature(spec, params, x, states, cost)


def kd_stiffness(config, batch_size: int = 64, margin: float = 1.0, signal: str = 'kd') -> dict:
  """Per hidden layer: `lambda` (λ_l, `signals.signal_curvature` of the signal's cost:
  per-unit KD on the config's `signals.kd.layers` for `signal='kd'`, the config's LES losses
  and heads on `signals.les.layers` for 'les'), `rate` (η_l), `kappa` (κ_l at epoch 0, 0 off
  the signal's layers), `product` (η_l κ_l λ_l) and `kappa_cap` (`margin / (η_l λ_l)`), at the
  config's initial network and free fixed point on `batch_size` training examples;
  `divergence_bound` is 2 (1 + μ) for SGD with momentum μ, None for Adam."""
  if margin <= 0:
    raise ValueError(f'margin must be positive, got {margin}')
  if signal not in SIGNALS:
    raise ValueError(f'unknown signal {signal!r}; known: {SIGNALS}')
  train_split, _, info = build.load_data(config)
  x = jnp.asarray(data.normalize(train_split.images[:batch_size], info))
  labels = jnp.asarray(train_split.labels[:batch_size])
  spec, params, free = _initial_fixed_point(config, train_split, info, x)
  hidden = signals.num_hidden(spec)
  if signal == 'kd':
    layers = signals.resolve_layers(tuple(config.signals.kd.layers), spec, 'signals.kd')
    lam = signals.kd_curvature(spec, params, x, free.states, kd_layers=layers,
                               normalize='unit')
  else:
    layers, lam = _les_curvature(config, spec, params, x, labels, free.states)
  kd_layers = layers
  o = config.optim
  rates = optim.per_group(o.learning_rates if isinstance(o.learning_rates, (int, float))
                          else tuple(o.learning_rates), spec, 'optim.learning_rates')
  eta = [rates[name] for name in spec.layer_names[:hidden]]
  k = config.signals.kappa
  kap = [float(v) for v in kappa.layer_init(hidden, kd_layers, k.init, k.per_layer)]
  return {'signal': signal, 'layers': list(spec.layer_names[:hidden]), 'batch_size': batch_size,
          'free_steps': int(free.steps), 'free_residual': float(free.residual),
          'lambda': lam, 'rate': eta, 'kappa': kap,
          'product': [r * q * v for r, q, v in zip(eta, kap, lam)],
          'kappa_cap': [margin / (r * v) if r * v > 0 else float('inf')
                        for r, v in zip(eta, lam)],
          'margin': margin, 'optimizer': str(o.optimizer),
          'divergence_bound': (2.0 * (1.0 + float(o.momentum)) if o.optimizer == 'sgd'
                               else None)}


def stiffness_table(result: dict) -> str:
  names = result['layers']
  rows = [(f"λ_l ({result.get('signal', 'kd').upper()} Gauss-Newton)", 'lambda', '{:.3g}'),
          ('η_l', 'rate', '{:g}'),
          ('κ_l', 'kappa', '{:g}'), ('η_l κ_l λ_l', 'product', '{:.3g}'),
          (f"κ cap ({result['margin']:g} / η_l λ_l)", 'kappa_cap', '{:.3g}')]
  lines = ['| | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for label, key, fmt in rows:
    lines.append(f'| {label} | ' + ' | '.join(fmt.format(v) for v in result[key]) + ' |')
  return '\n'.join(lines)


def table(result: dict) -> str:
  names = result['layers']
  lines = ['| setting | ' + ' | '.join(names) + ' | last / first |',
           '|---|' + '---|' * (len(names) + 1)]
  for row in result['rows']:
    r = row['rms_nudge']
    ratio = r[-1] / r[0] if r[0] > 0 else float('inf')
    lines.append(f"| {row['setting']} | " + ' | '.join(f'{v:.1e}' for v in r) +
                 f' | {ratio:.3g} |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  kappas = [float(k) for k in _KAPPAS.value]
  if any(k <= 0 for k in kappas):
    raise app.UsageError(f'--kappas must be positive, got {kappas}')
  if _ONLY_TEACHER.value and not _TEACHER.value:
    raise app.UsageError('--only_teacher needs --teacher_workdir')
  if _CURVATURE.value:
    if _MARGIN.value <= 0:
      raise app.UsageError(f'--margin must be positive, got {_MARGIN.value}')
    result = kd_stiffness(cli.config_value(_CONFIG), _BATCH.value, _MARGIN.value,
                          signal=_SIGNAL.value)
    bound = result['divergence_bound']
    print(f"free phase: {result['free_steps']} steps, residual {result['free_residual']:.1e}; "
          + (f"sgd diverges on a {result['signal'].upper()} term where η κ λ > {bound:g}:"
             if bound is not None else
             f"{result['optimizer']}: no η κ λ bound (it applies to SGD):"))
    print(stiffness_table(result))
    _write(result)
    return
  result = measure(cli.config_value(_CONFIG), _TEACHER.value, kappas, _BATCH.value,
                   only_teacher=_ONLY_TEACHER.value)
  if result['teacher'] is not None:
    print(f"the teacher's activations (the KD targets) on {result['batch_size']} "
          'training examples:')
    print(teacher_table(result['teacher']))
  if _ONLY_TEACHER.value:
    _write(result)
    return
  print(f"free phase: {result['free_steps']} steps, residual {result['free_residual']:.1e}; "
        'mean |s_l| ' + ' '.join(f'{a:.3f}' for a in result['mean_abs_state']))
  print(f"per-unit RMS nudge sqrt(mean (s^β - s^0)²) at β = {result['beta']}:")
  print(table(result))
  _write(result)


def _write(result: dict) -> None:
  if _OUT.value:
    with open(_OUT.value, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1)


def define_flags() -> None:
  """Defines this script's flags (only when run as a script)."""
  global _CONFIG, _TEACHER, _KAPPAS, _BATCH, _OUT, _ONLY_TEACHER, _CURVATURE, _MARGIN, _SIGNAL
  _CONFIG = cli.define_config_file(os.path.join(cli.CONFIG_DIR, 'ablation_digits.py'),
                                    'path to config file.', lock_config=False)
  _TEACHER = flags.DEFINE_string('teacher_workdir', '', 'A BP teacher (KD rows need one).')
  _KAPPAS = flags.DEFINE_list('kappas', ['0.1', '1'], 'κ values of the signal rows.')
  _BATCH = flags.DEFINE_integer('batch_size', 64, 'Training examples measured.')
  _OUT = flags.DEFINE_string('out', '', 'Write the figures to this JSON file.')
  _ONLY_TEACHER = flags.DEFINE_bool('only_teacher', False,
                                    "Only the teacher's activations (needs --teacher_workdir).")
  _CURVATURE = flags.DEFINE_bool('curvature', False,
                                 "Each layer's KD stiffness λ_l, η_l κ_l λ_l and the κ cap.")
  _MARGIN = flags.DEFINE_float('margin', 1.0, 'The κ cap keeps η_l κ_l λ_l at most this.')
  _SIGNAL = flags.DEFINE_enum('signal', 'kd', list(SIGNALS),
                              "--curvature: the signal whose stiffness is measured (kd, les).")


if __name__ == '__main__':
  cli.run(main, define_flags)
