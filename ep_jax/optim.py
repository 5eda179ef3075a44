"""The optimiser: optax SGD with momentum, weight decay and per-layer learning rates.

Each parameter group (a layer's `{'w','b'}`, the readout, trainable signal heads) gets
`chain(add_decayed_weights(wd), sgd(schedule_g, momentum))` through `optax.multi_transform`,
where `schedule_g` is the group's base learning rate under a shared schedule shape:
constant, cosine annealing to `eta_min` (PyTorch's CosineAnnealingLR), or cosine with warm
restarts (SGDR). Weight decay before momentum matches `torch.optim.SGD(weight_decay=...)`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import optax

from ep_jax.network import NetworkSpec, synapse_names

SCHEDULES = ('constant', 'cosine', 'sgdr')


def learning_rate_schedule(base_lr: float, *, schedule: str, total_steps: int,
                           eta_min: float = 0.0, restart_period: int = 0,
                           restart_mult: float = 1.0) -> optax.Schedule:
  """A step -> learning-rate function built from optax schedules.

  'cosine': `eta_min + (lr - eta_min)(1 + cos(π t / total_steps)) / 2`, then `eta_min`.
  'sgdr': the same within periods of `restart_period` steps (growing by `restart_mult`),
  restarting at `lr`, until `total_steps` are covered.
  """
  if schedule == 'constant':
    return optax.constant_schedule(base_lr)
  alpha = eta_min / base_lr if base_lr > 0 else 0.0
  if schedule == 'cosine':
    return optax.cosine_decay_schedule(base_lr, max(1, total_steps), alpha=alpha)
  if schedule == 'sgdr':
    if restart_period <= 0:
      raise ValueError(f'sgdr needs restart_period > 0 steps, got {restart_period}')
    periods, covered, length = [], 0, float(restart_period)
    while covered < max(1, total_steps):
      periods.append(max(1, int(round(length))))
      covered += periods[-1]
      length *= restart_mult
    return optax.join_schedules(
        [optax.cosine_decay_schedule(base_lr, p, alpha=alpha) for p in periods],
        boundaries=[sum(periods[:i + 1]) for i in range(len(periods) - 1)])
  raise ValueError(f'unknown schedule {schedule!r}; known: {SCHEDULES}')


def group_labels(params: dict, spec: NetworkSpec) -> dict:
  """Labels each leaf with its group: the layer name, 'readout', or the top-level key."""
  names = spec.layer_names

  def label(path, _):
    top = path[0].key
    if top == 'layers':
      return names[path[1].idx]
    return top

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(spec: NetworkSpec, params: dict, *, learning_rates: float | Sequence[float],
                   momentum: float = 0.9, weight_decay: float = 0.0,
                   schedule: str = 'cosine', total_steps: int = 1, eta_min: float = 0.0,
                   restart_period: int = 0, restart_mult: float = 1.0,
                   extra_learning_rates: dict | None = None,
                   nesterov: bool = False) -> optax.GradientTransformation:
  """Builds the optax transform for `params`.

  Args:
    learning_rates: one rate for every group (a float or a 1-tuple), or one per synapse group in order
      (`synapse_names(spec)`: conv layers, dense layers, [output], readout), as in the
      reference's `--lrs 0.25 0.15 0.1 0.08 0.05`.
    extra_learning_rates: rates for other top-level groups (e.g. {'signals': 0.01}); groups
      without one use the last synapse rate.
  """
  groups = synapse_names(spec)
  if not isinstance(learning_rates, (int, float)) and len(learning_rates) == 1:
    learning_rates = learning_rates[0]
  if isinstance(learning_rates, (int, float)):
    rates = {g: float(learning_rates) for g in groups}
  else:
    learning_rates = [float(r) for r in learning_rates]
    if len(learning_rates) != len(groups):
      raise ValueError(f'learning_rates has {len(learning_rates)} entries but the network has '
                       f'{len(groups)} parameter groups {groups}')
    rates = dict(zip(groups, learning_rates))
  if any(r < 0 for r in rates.values()):
    raise ValueError(f'learning rates must be >= 0, got {rates}')
  labels = group_labels(params, spec)
  for group in set(jax.tree_util.tree_leaves(labels)) - set(rates):
    rates[group] = float((extra_learning_rates or {}).get(group, rates[groups[-1]]))

  def group_transform(rate):
    lr = learning_rate_schedule(rate, schedule=schedule, total_steps=total_steps,
                                eta_min=eta_min, restart_period=restart_period,
                                restart_mult=restart_mult)
    parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    parts.append(optax.sgd(lr, momentum=momentum or None, nesterov=nesterov))
    return optax.chain(*parts)

  return optax.multi_transform({g: group_transform(r) for g, r in rates.items()}, labels)


def current_learning_rates(spec: NetworkSpec, *, learning_rates, schedule: str,
                           total_steps: int, step: int, eta_min: float = 0.0,
                           restart_period: int = 0, restart_mult: float = 1.0) -> list[float]:
  """The per-group learning rates at `step` (for logging)."""
  if not isinstance(learning_rates, (int, float)) and len(learning_rates) == 1:
    learning_rates = learning_rates[0]
  rates = ([learning_rates] * len(synapse_names(spec))
           if isinstance(learning_rates, (int, float)) else list(learning_rates))
  return [float(learning_rate_schedule(r, schedule=schedule, total_steps=total_steps,
                                       eta_min=eta_min, restart_period=restart_period,
                                       restart_mult=restart_mult)(step)) for r in rates]
