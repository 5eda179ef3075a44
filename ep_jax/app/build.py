"""The objects a run's `ml_collections` config describes, built for the `ep_jax` core.

The core takes arrays, static specs and plain arguments; this module reads a config (or a
saved run's `config.json`, fields newer than it taking their defaults) and a teacher workdir
into them: the spec (`build_spec`), the EP settings (`build_ep_config`, `build_solver`), the
data (`load_data`, `augmentation`), the learning signals with their κ and α schedules
(`build_signals`), the layer names of a `model` section (`model_layer_names`) and a
saved teacher (`load_teacher`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ep_jax import connections, network, relaxation, signals
from ep_jax.app import data as data_lib
from ep_jax.app.checkpointing import Checkpointer
from ep_jax.estimators import EPConfig
from ep_jax.network import NetworkSpec

__all__ = [
    'TEACHER_CHECKPOINTS', 'TEACHER_JSON', 'VALIDATION_SEED', 'augmentation', 'build_ep_config',
    'build_signals', 'build_solver', 'build_spec', 'load_data', 'load_teacher',
    'model_layer_names', 'skips_from_config',
]

# A teacher workdir: `teacher.json` (the spec's fields, the step to load, the test accuracy and
# other info) and the parameters under `checkpoints/<step>/`.
TEACHER_JSON = 'teacher.json'
TEACHER_CHECKPOINTS = 'checkpoints'


# --------------------------------------------------------------------------- the network


def build_spec(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo,
               readout: str = '', activation: str = '') -> NetworkSpec:
  """The network of `config.model` for `info`'s data (`readout` and `activation`, when given,
  override the model's).

  Here, as everywhere in this module and in `train.build_run`, fields newer than some saved
  runs are read with their defaults, so an older run's `config.json` still builds.
  `model.skips` holds 1-based conv layer numbers (`(1, 3)` = conv1 -> conv3); the spec's are
  0-based.
  """
  m = config.model
  return network.make_spec(m.layout, input_shape=info.input_shape, num_classes=info.num_classes,
                           dense=tuple(m.dense), readout=readout or m.readout,
                           activation=activation or m.activation, kernel_size=m.kernel_size,
                           padding=m.padding, pool_ties=m.get('pool_ties', 'first'),
                           kernel_sizes=tuple(m.get('kernel_sizes', ())),
                           paddings=tuple(m.get('paddings', ())),
                           skips=skips_from_config(m.get('skips', ())))


def skips_from_config(skips: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
  """`model.skips` (pairs of 1-based conv layer numbers) as 0-based layer index pairs.

  Raises:
    ValueError: an entry that is not a pair of integers >= 1.
  """
  out = []
  for pair in tuple(skips):
    try:
      i, j = (int(v) for v in pair)
      if len(tuple(pair)) != 2 or min(i, j) < 1:
        raise ValueError
    except (TypeError, ValueError):
      raise ValueError(f'model.skips entry {pair!r} must be a pair of 1-based conv layer '
                       'numbers, e.g. (1, 3) for conv1 -> conv3') from None
    out.append((i - 1, j - 1))
  return tuple(out)


def build_ep_config(config: ml_collections.ConfigDict) -> EPConfig:
  e = config.ep
  return EPConfig(estimator=e.estimator, beta=float(e.beta), free_steps=int(e.free_steps),
                  nudged_steps=int(e.nudged_steps), tol=float(e.tol), mode=e.mode,
                  holo_points=int(e.holo_points),
                  compute_dtype=e.get('compute_dtype', '') or None,
                  damping=float(e.get('damping', 1.0)),
                  nudged_phases=e.get('nudged_phases', 'sequential'),
                  solver=build_solver(config))


def build_solver(config: ml_collections.ConfigDict) -> Optional[relaxation.Solver]:
  """`config.ep.solver` as a `relaxation.Solver`; None (plain iteration) for 'plain' or a
  config.json written before the field existed."""
  s = config.ep.get('solver')
  if s is None or s.get('kind', 'plain') == 'plain':
    return None
  return relaxation.Solver(kind=s.kind, memory=int(s.memory),
                           regularization=float(s.regularization), mixing=float(s.mixing),
                           safeguard=bool(s.safeguard), start_residual=float(s.start_residual))


def model_layer_names(model: Any) -> tuple[str, ...]:
  """`network.layer_names` of a config's `model` section (a dict or ConfigDict, e.g. a saved
  run's `config.json`): its layout, dense widths and readout."""
  conv = len(network.parse_layout(model['layout'])) if model.get('layout') else 0
  return network.layer_names(conv, len(model.get('dense', ())), model.get('readout', 'softmax'))


# ------------------------------------------------------------------------------- the data


# The seed of the validation split: fixed, so every run and seed holds out the same examples.
VALIDATION_SEED = 12345


def load_data(config: ml_collections.ConfigDict):
  """`(train, evaluation, info)` per `config.data`.

  `info` normalises with `data.mean` / `data.std` where they are set (else the dataset's own
  statistics). With `data.validation = N > 0` N examples of a fixed near-stratified split of
  the training set (`VALIDATION_SEED`) replace the test split for every evaluation, and
  training uses the rest: hyperparameters are then chosen without reading the test split.
  """
  d = config.data
  train, test, info = data_lib.load_dataset(
      d.dataset, data_dir=d.data_dir or None, train_files=tuple(d.train_files),
      test_files=tuple(d.test_files), train_subset=d.train_subset, test_subset=d.test_subset,
      seed=config.seed)
  info = data_lib.with_statistics(info, tuple(d.get('mean', ())), tuple(d.get('std', ())))
  n = int(d.get('validation', 0))
  if n == 0:
    return train, test, info
  if not 0 < n < len(train):
    raise ValueError(f'data.validation must be 0 (off) or between 1 and the training set size '
                     f'- 1 ({len(train) - 1}), got {n}')
  keep, held = data_lib.stratified_split(train.labels, n, VALIDATION_SEED)
  info = dataclasses.replace(info, num_train=len(keep), num_test=n)
  return train.take(np.sort(keep)), train.take(np.sort(held)), info


def augmentation(config: ml_collections.ConfigDict) -> dict:
  """The augmentation keyword arguments of `data.train_batches` from `config.data`."""
  d = config.data
  return dict(augment=d.augment, crop_padding=d.crop_padding, flip=d.flip,
              crop_mode=d.get('crop_mode', 'constant'))


# ------------------------------------------------------------------- the learning signals


def build_signals(signals_config: Any, spec: NetworkSpec, *, num_epochs: int, rng: jax.Array,
                  teacher_params: Optional[Any] = None,
                  teacher_spec: Optional[NetworkSpec] = None) -> signals.SignalSetup:
  """`signals.make_signals` of a `config.signals` section (`les.*`, `kd.*`, `kappa.*`; see
  `ep_jax.app.config`).

  teacher_params, teacher_spec: a teacher given directly; otherwise KD loads it from
  `signals_config.kd.teacher_workdir` (`load_teacher`).

  Raises:
    ValueError: bad options (`signals.make_signals`), only one of teacher_params and
      teacher_spec, or KD without a teacher workdir.
  """
  les_cfg, kd_cfg, k = signals_config.les, signals_config.kd, signals_config.kappa
  les = kd = None
  if les_cfg.enabled:
    les = signals.LESConfig(tuple(les_cfg.layers), les_cfg.head, les_cfg.pool, les_cfg.loss,
                            les_cfg.predsim_mix, les_cfg.get('normalize', 'mean'))
  if kd_cfg.enabled:
    kd = signals.KDConfig(tuple(kd_cfg.layers), bool(kd_cfg.output), kd_cfg.alpha,
                          kd_cfg.temperature, kd_cfg.get('normalize', 'layer'))
    if (teacher_params is None) != (teacher_spec is None):
      raise ValueError('pass both teacher_params and teacher_spec, or neither')
    if teacher_params is None:
      if not kd_cfg.teacher_workdir:
        raise ValueError('signals.kd.enabled needs signals.kd.teacher_workdir (a workdir of '
                         '`python -m experiments.train_teacher`)')
      teacher_spec, teacher_params, _ = load_teacher(kd_cfg.teacher_workdir)
  return signals.make_signals(
      spec, num_epochs=num_epochs, rng=rng, les=les, kd=kd,
      kd_layerwise=bool(kd_cfg.get('layerwise', True)),
      alpha_schedule=kd_cfg.get('alpha_schedule', 'constant'),
      alpha_min=float(kd_cfg.get('alpha_min', 0.0)),
      alpha_gamma=float(kd_cfg.get('alpha_gamma', 0.1)), kappa_schedule=k.schedule,
      kappa_init=k.init, kappa_min=float(k.min), kappa_gamma=float(k.gamma),
      kappa_per_layer=tuple(k.per_layer), teacher_params=teacher_params,
      teacher_spec=teacher_spec)


# ---------------------------------------------------------------------------- the teacher


def load_teacher(workdir: str, kinds: Sequence[connections.ConnectionKind] = ()
                 ) -> tuple[NetworkSpec, dict, dict]:
  """Loads `(spec, params, info)` saved by `ep_jax.app.teacher.save_teacher` (info: the
  `teacher.json` dict); `kinds`: the connection kinds of the spec's edges (see
  `NetworkSpec.from_dict`).

  Raises:
    FileNotFoundError: no `teacher.json` in `workdir` (with how to make one).
    ep_jax.app.checkpointing.CheckpointError: a missing, corrupt or mismatched checkpoint.
  """
  path = os.path.join(workdir, TEACHER_JSON)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'no teacher in {workdir!r}: {TEACHER_JSON} not found; train one with '
        f'`python -m experiments.train_teacher --config=... --workdir={workdir}`')
  with open(path, 'r', encoding='utf-8') as f:
    meta = json.load(f)
  spec = NetworkSpec.from_dict(meta['spec'], kinds)
  dtype = jnp.dtype(meta.get('dtype', 'float32'))
  target = jax.eval_shape(lambda: network.init_params(spec, jax.random.PRNGKey(0), dtype=dtype))
  with Checkpointer(os.path.join(workdir, TEACHER_CHECKPOINTS), max_to_keep=1,
                    best_metric='test_accuracy') as ckpt:
    params, _ = ckpt.restore(target, step=int(meta['step']))
  return spec, params, meta
