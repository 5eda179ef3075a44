"""The optimiser: optax SGD with momentum, weight decay and per-layer learning rates.

Each parameter group (a layer's `{'w','b'}`, the readout, trainable signal heads) gets
`chain(add_decayed_weights(wd_g), sgd(schedule_g, momentum))` through `optax.multi_transform`,
where `wd_g` is the group's weight decay and `schedule_g` its base learning rate under a shared
schedule shape: constant, cosine annealing to `eta_min` (PyTorch's CosineAnnealingLR), or
cosine with warm restarts (SGDR), over a horizon after which the rate holds at `eta_min`.
The rate may change every step, or once per epoch as torch's `scheduler.step()` after each
epoch. Weight decay before momentum matches `torch.optim.SGD(weight_decay=...)`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import optax

from ep_jax.network import NetworkSpec, synapse_names

__all__ = [
    'OPTIMIZERS', 'SCHEDULES', 'SCHEDULE_STEPS', 'current_learning_rates', 'group_labels',
    'learning_rate_schedule', 'make_optimizer', 'per_group', 'schedule_kwargs',
]

SCHEDULES = ('constant', 'cosine', 'sgdr')
SCHEDULE_STEPS = ('step', 'epoch')


OPTIMIZERS = ('sgd', 'adam')


def learning_rate_schedule(base_lr: float, *, schedule: str, total_steps: int,
                           eta_min: float = 0.0, restart_period: int = 0,
                           restart_mult: float = 1.0, decay_steps: int = 0,
                           step_every: int = 1) -> optax.Schedule:
  """A step -> learning-rate function built from optax schedules.

  'cosine': `eta_min + (lr - eta_min)(1 + cos(π t / T)) / 2` for `t <= T`, then `eta_min`,
  with the horizon `T = decay_steps` (0: `total_steps`).
  'sgdr': the same within periods of `restart_period` steps (growing by `restart_mult`),
  restarting at `lr`, until the horizon is covered.
  step_every: the rate changes only every `step_every` steps (`t` is rounded down to a
  multiple of it): the steps per epoch give torch's once-per-epoch `scheduler.step()`.
  """
  if schedule == 'constant':
    return optax.constant_schedule(base_lr)
  alpha = eta_min / base_lr if base_lr > 0 else 0.0
  horizon = max(1, decay_steps if decay_steps > 0 else total_steps)
  if schedule == 'cosine':
    per_step = optax.cosine_decay_schedule(base_lr, horizon, alpha=alpha)
  elif schedule == 'sgdr':
    if restart_period <= 0:
      raise ValueError(f'sgdr needs restart_period > 0 steps, got {restart_period}')
    periods, covered, length = [], 0, float(restart_period)
    while covered < horizon:
      periods.append(max(1, int(round(length))))
      covered += periods[-1]
      length *= restart_mult
    per_step = optax.join_schedules(
        [optax.cosine_decay_schedule(base_lr, p, alpha=alpha) for p in periods],
        boundaries=[sum(periods[:i + 1]) for i in range(len(periods) - 1)])
  else:
    raise ValueError(f'unknown schedule {schedule!r}; known: {SCHEDULES}')
  if step_every <= 1:
    return per_step
  return lambda count: per_step(count // step_every * step_every)


def schedule_kwargs(*, schedule: str, steps_per_epoch: int, epochs: int, eta_min: float = 0.0,
                    restart_epochs: int = 0, restart_mult: float = 1.0, decay_epochs: int = 0,
                    schedule_step: str = 'step') -> dict:
  """`learning_rate_schedule`'s keyword arguments (less the base rate) for a run of `epochs`.

  decay_epochs: the horizon of the cosine in epochs (0: all `epochs`); after it the rate holds
    at `eta_min`. The reference's `CosineAnnealingLR(T_max=100)` over 120 epochs is 100.
  schedule_step: 'step' (the rate changes every step) or 'epoch' (once per epoch, constant
    within it, as torch's scheduler stepped after each epoch).
  """
  if schedule_step not in SCHEDULE_STEPS:
    raise ValueError(f'schedule_step must be one of {SCHEDULE_STEPS}, got {schedule_step!r}')
  if int(decay_epochs) != decay_epochs or decay_epochs < 0:
    raise ValueError(f'decay_epochs must be an integer >= 0 (0: all epochs), got '
                     f'{decay_epochs!r}')
  return dict(schedule=schedule, total_steps=steps_per_epoch * epochs, eta_min=eta_min,
              restart_period=int(restart_epochs) * steps_per_epoch, restart_mult=restart_mult,
              decay_steps=int(decay_epochs) * steps_per_epoch,
              step_every=steps_per_epoch if schedule_step == 'epoch' else 1)


def group_labels(params: dict, spec: NetworkSpec) -> dict:
  """Labels each leaf with its group: the layer name, 'readout', or the top-level key."""
  names = spec.layer_names

  def label(path, _):
    top = path[0].key
    if top == 'layers':
      return names[path[1].idx]
    return top

  return jax.tree_util.tree_map_with_path(label, params)


def per_group(values: float | Sequence[float], spec: NetworkSpec, what: str) -> dict:
  """`{group: value}` over `synapse_names(spec)` from one value (a float or a 1-tuple) or one
  per synapse group in order.

  Raises:
    ValueError: a sequence of another length, or a negative value (naming `what`).
  """
  groups = synapse_names(spec)
  if not isinstance(values, (int, float)) and len(values) == 1:
    values = values[0]
  if isinstance(values, (int, float)):
    out = {g: float(values) for g in groups}
  else:
    values = [float(v) for v in values]
    if len(values) != len(groups):
      raise ValueError(f'{what} has {len(values)} entries but the network has {len(groups)} '
                       f'parameter groups {groups}')
    out = dict(zip(groups, values))
  if any(v < 0 for v in out.values()):
    raise ValueError(f'{what} must be >= 0, got {out}')
  return out


def make_optimizer(spec: NetworkSpec, params: dict, *, learning_rates: float | Sequence[float],
                   momentum: float = 0.9, weight_decay: float | Sequence[float] = 0.0,
                   schedule: str = 'cosine', total_steps: int = 1, eta_min: float = 0.0,
                   restart_period: int = 0, restart_mult: float = 1.0, decay_steps: int = 0,
                   step_every: int = 1, extra_learning_rates: dict | None = None,
                   nesterov: bool = False, optimizer: str = 'sgd') -> optax.GradientTransformation:
  """Builds the optax transform for `params`.

  Args:
    learning_rates: one rate for every group (a float or a 1-tuple), or one per synapse group
      in order (`synapse_names(spec)`: conv layers, dense layers, [output], readout), as in the
      reference's `--lrs 0.25 0.15 0.1 0.08 0.05`.
    weight_decay: the same forms, as the reference's `--wds`. Other groups (signal heads) get
      the last synapse group's.
    schedule, total_steps, eta_min, restart_period, restart_mult, decay_steps, step_every:
      the shared schedule shape, see `learning_rate_schedule`.
    extra_learning_rates: rates for other top-level groups (e.g. {'signals': 0.01}); groups
      without one use the last synapse rate.
    optimizer: 'sgd' (heavy-ball `momentum`, optionally Nesterov: the reference's) or 'adam'
      (`optax.adam`, β1 = 0.9, β2 = 0.999: per-parameter step sizes, insensitive to the
      orders-of-magnitude differences between layers' gradients; `momentum` unused). Weight
      decay is added to the gradient before either (L2, torch's convention).
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(f'unknown optimizer {optimizer!r}; known: {OPTIMIZERS}')
  groups = synapse_names(spec)
  rates = per_group(learning_rates, spec, 'learning_rates')
  decays = per_group(weight_decay, spec, 'weight_decay')
  labels = group_labels(params, spec)
  for group in set(jax.tree_util.tree_leaves(labels)) - set(rates):
    rates[group] = float((extra_learning_rates or {}).get(group, rates[groups[-1]]))
    decays[group] = decays[groups[-1]]

  def group_transform(rate, decay):
    lr = learning_rate_schedule(rate, schedule=schedule, total_steps=total_steps,
                                eta_min=eta_min, restart_period=restart_period,
                                restart_mult=restart_mult, decay_steps=decay_steps,
                                step_every=step_every)
    parts = [optax.add_decayed_weights(decay)] if decay else []
    if optimizer == 'adam':
      parts.append(optax.adam(lr))
    else:
      parts.append(optax.sgd(lr, momentum=momentum or None, nesterov=nesterov))
    return optax.chain(*parts)

  return optax.multi_transform({g: group_transform(r, decays[g]) for g, r in rates.items()},
                               labels)


def current_learning_rates(spec: NetworkSpec, *, learning_rates: float | Sequence[float],
                           step: int, **schedule_args: Any) -> list[float]:
  """The per-group learning rates at `step` (for logging); `schedule_args`: the keyword
  arguments of `learning_rate_schedule` (e.g. `schedule_kwargs(...)`)."""
  rates = per_group(learning_rates, spec, 'learning_rates')
  return [float(learning_rate_schedule(r, **schedule_args)(step)) for r in rates.values()]
