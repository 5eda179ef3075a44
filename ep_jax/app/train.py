"""`train_and_evaluate(config, workdir)`: the EP training loop behind `experiments.train`.

Per epoch: shuffled (optionally augmented) training batches on a background thread, one
jitted EP train step per batch over a `Mesh` of all devices (batch sharded on 'data',
state replicated and donated), a full evaluation of the test split (padded last batch, masked),
then one record in `metrics.jsonl` (with signals, plus the nudge's split on the epoch's last
batch: `train_step.make_nudge_split`), TensorBoard and `curves.png`, and an orbax checkpoint
named by the number of epochs it completes (`checkpoints/1` after the first epoch). Running
again with the same workdir and config resumes from the latest checkpoint (parameters,
optimiser state, RNG, and the data order, which is a function of (seed, epoch)); another
config is refused (`check_resume`), and nothing is written before the restore succeeds.

A non-finite loss, gradient or relaxation stops training with `NonFiniteError` naming the
epoch, the step and the first layer whose states went non-finite; the last good checkpoint is
kept as it was.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ep_jax import estimators, initialization, network, optim
from ep_jax.app import build, teacher
from ep_jax.app import data as data_lib
from ep_jax.app.checkpointing import Checkpointer
from ep_jax.app.loop import EpochRun, evaluate, mean_over_steps, run_epoch
from ep_jax.app.metrics_io import MetricsWriter, ProgressReporter, jsonable, percent
from ep_jax.train_step import (TrainState, create_train_state, free_state_store, make_eval_step,
                               make_nudge_split, make_train_step)

__all__ = [
    'CHECKPOINT_DIR', 'DTYPES', 'Interrupted', 'MID_EPOCH_DIR', 'NonConvergenceError',
    'NonFiniteError', 'RESUME_FREE_FIELDS', 'RunSetup', 'TEACHER_DIR', 'build_run',
    'calibrated_config', 'check_config', 'check_convergence', 'check_resume',
    'config_differences', 'epoch_record',
    'epochs_checkpointed', 'epochs_done', 'has_checkpoints', 'init_key', 'init_model_params',
    'initialize_distributed', 'is_unfinished_run', 'make_mesh', 'saved_config',
    'signals_enabled', 'state_dtype',
    'template_config', 'to_global', 'train_and_evaluate', 'with_teacher',
]

CHECKPOINT_DIR = 'checkpoints'
# The latest mid-epoch checkpoint (parameters, optimiser, the input iterator's position and
# the epoch's training metrics so far), named by the global step; removed at each epoch end.
MID_EPOCH_DIR = 'checkpoints_mid_epoch'
TEACHER_DIR = 'teacher'  # where signals.kd.train_teacher puts the run's BP teacher
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}


class NonFiniteError(FloatingPointError):
  """Training produced NaN/inf; the message names the epoch, step and layer."""


class NonConvergenceError(NonFiniteError):
  """The free phase stayed finite but did not settle (its final residual exceeded
  `ep.max_residual` on average over an epoch); the message names the epoch and the layers.

  A subclass of `NonFiniteError` so that code handling diverged training (the sweep's
  failure record, the ablation report) handles both.
  """


def check_convergence(config: ml_collections.ConfigDict, spec: network.NetworkSpec,
                      train: dict, *, epoch: int, checkpoints: str, steps: list) -> None:
  """Raises `NonConvergenceError` if the epoch's mean final free-phase residual is above
  `config.ep.max_residual` (<= 0 disables the check).

  The residual is `max |s^t - s^{t-1}|` of the last free step (states live in [0, 1] for the
  hard sigmoid): a settled relaxation ends near `tol` (or ~1e-6..1e-2 with fixed T1), an
  oscillating one (synchronous updates with strong feedback) at 0.3..1. EP's gradient estimate
  assumes a fixed point, so training on an oscillating relaxation is not EP.
  """
  limit = float(config.ep.get('max_residual', 0.0))
  residual = float(train['free_residual'])
  if limit <= 0 or residual <= limit:
    return
  per_layer = np.asarray(train.get('layer_free_residual', []), np.float64).ravel()
  names = spec.layer_names[:len(per_layer)]
  order = np.argsort(-per_layer)
  worst = ', '.join(f'{names[i]} {per_layer[i]:.3g}' for i in order[:4] if per_layer[i] > limit)
  raise NonConvergenceError(
      f'the free phase did not converge at epoch {epoch}: mean final residual {residual:.3g} '
      f'> ep.max_residual={limit:g} after {float(train["free_steps"]):.0f} steps on average '
      f'(limit T1={config.ep.free_steps}, tol={config.ep.tol}); layers above the limit: '
      f'{worst or "none individually"}. The last good checkpoint is kept in {checkpoints} '
      f'(steps {steps}); this epoch was not saved. Lower the learning rates, beta, '
      f'model.init_scale or the signals\' kappa, use ep.mode=async, raise ep.free_steps, or '
      f'set ep.max_residual=0 to train on regardless.')


def _check_writable(workdir: str) -> None:
  """Raises PermissionError unless `workdir` can be created or written; creates nothing."""
  path = workdir
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
    reason = 'not a directory' if not os.path.isdir(path) else 'no write permission'
    raise PermissionError(f'workdir {workdir!r} is not writable: {path!r}: {reason}')


def _remove_empty_dirs(workdir: str) -> None:
  """Removes `workdir` and the folders under it if they hold no file (bottom up)."""
  for root, _, _ in sorted(os.walk(workdir), key=lambda w: -len(w[0])):
    try:
      os.rmdir(root)
    except OSError:
      pass


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks what can be checked without data, so a bad config fails in well under a second.

  Raises:
    ValueError / FileNotFoundError naming the field: epochs or batch sizes below 1, an
    unknown dataset, a malformed layout, a learning-rate or weight-decay count that does not
    match the layers, unknown EP options or optimizer, ep.dtype='float64' without 64-bit
    JAX, a batch size the devices do not divide, a missing distillation teacher.
  """
  t, o = config.train, config.optim
  for field in ('epochs', 'batch_size', 'eval_batch_size'):
    if int(t[field]) < 1:
      raise ValueError(f'train.{field} must be >= 1, got {t[field]}')
  for field in ('checkpoint_every_steps', 'checkpoint_every_seconds'):
    if float(t.get(field, 0)) < 0:
      raise ValueError(f'train.{field} must be >= 0 (0: off), got {t[field]}')
  data_lib.check_dataset_name(config.data.dataset)
  shape = data_lib.known_input_shape(config.data.dataset)
  if shape is not None:  # the spec of an npz dataset needs its files
    spec = build.build_spec(config, data_lib.DatasetInfo(
        name=config.data.dataset, input_shape=shape, num_classes=2, num_train=1, num_test=1,
        mean=(0.0,) * shape[-1], std=(1.0,) * shape[-1]))
    optim.per_group(o.learning_rates if isinstance(o.learning_rates, (int, float))
                    else tuple(o.learning_rates), spec, 'optim.learning_rates')
    optim.per_group(o.weight_decay if isinstance(o.weight_decay, (int, float))
                    else tuple(o.weight_decay), spec, 'optim.weight_decay')
  else:
    network.parse_layout(config.model.layout)
  build.build_ep_config(config)
  if o.get('optimizer', 'sgd') not in optim.OPTIMIZERS:
    raise ValueError(f'unknown optim.optimizer {o.optimizer!r}; known: {optim.OPTIMIZERS}')
  state_dtype(config)
  if not config.train.multihost:
    make_mesh(t.batch_size, t.eval_batch_size, t.num_devices)
  kd = config.signals.kd
  if kd.enabled:
    if not kd.teacher_workdir:
      if not kd.get('train_teacher', False):
        raise ValueError('signals.kd.enabled needs signals.kd.teacher_workdir (a workdir of '
                         'experiments.train_teacher) or signals.kd.train_teacher=True')
      if config.train.multihost:
        raise ValueError('signals.kd.train_teacher is single-process: train the teacher '
                         'first (experiments.train_teacher) and set signals.kd.teacher_workdir')
    elif not os.path.isfile(os.path.join(kd.teacher_workdir, build.TEACHER_JSON)):
      raise FileNotFoundError(
          f'signals.kd.teacher_workdir: no teacher in {kd.teacher_workdir!r} '
          f'({build.TEACHER_JSON} not found); train one with `python -m '
          f'experiments.train_teacher --config=... --workdir={kd.teacher_workdir}`')


# Fields a resumed run may change: they do not change what is computed.
RESUME_FREE_FIELDS = ('train.log_every_seconds', 'train.checkpoints_to_keep',
                      'train.checkpoint_every_steps', 'train.checkpoint_every_seconds',
                      'train.eval_batch_size', 'train.num_devices', 'train.multihost',
                      'train.coordinator_address', 'train.num_processes', 'train.process_id',
                      'data.data_dir', 'data.prefetch')


def _flatten(tree: Any, prefix: str = '') -> dict:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}.'))
    return out
  return {prefix[:-1]: tree}


def config_differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
  """`(field, saved value, current value)` for every field set in both that differs, except
  `RESUME_FREE_FIELDS` (fields newer than the saved run are not compared)."""
  old = _flatten(json.loads(json.dumps(saved)))
  new = _flatten(json.loads(json.dumps(current, default=str)))
  return [(k, old[k], new[k]) for k in sorted(old.keys() & new.keys())
          if old[k] != new[k] and k not in RESUME_FREE_FIELDS]


def has_checkpoints(workdir: str, folder: str = '') -> bool:
  """True if `workdir/checkpoints` or the mid-epoch folder (or `workdir/folder` alone)
  holds a committed checkpoint step (reads only)."""
  for name in (folder,) if folder else (CHECKPOINT_DIR, MID_EPOCH_DIR):
    directory = os.path.join(workdir, name)
    if os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory)):
      return True
  return False


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume the run in `workdir` with a config that differs from its
  `config.json` in a field that changes what is computed (ValueError naming the fields).

  `train.epochs` is one of them: the learning-rate schedule spans the run's epochs, so a run
  is not extended; a longer run is a new run in another workdir.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return
  try:
    with open(path, 'r', encoding='utf-8') as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read {path} to resume its run: {e}') from e
  diffs = config_differences(saved, config.to_dict())
  if not diffs:
    return
  listed = ', '.join(f'{k} ({old!r} -> {new!r})' for k, old, new in diffs[:8])
  more = f' and {len(diffs) - 8} more' if len(diffs) > 8 else ''
  epochs = ('; train.epochs sets the learning-rate schedule, so a run is not extended: train '
            'longer in a new run' if any(k == 'train.epochs' for k, _, _ in diffs) else '')
  raise ValueError(
      f'{workdir} holds a run with another config: {listed}{more}{epochs}. Its checkpoints '
      f'are kept. To resume it, run with its own config: the same flags, or '
      f'--config={path} --workdir={workdir}; for the new config use another --workdir.')


def saved_config(workdir: str) -> dict | None:
  """The config a run in `workdir` saved (`config.json`), or None if it has none."""
  try:
    with open(os.path.join(workdir, 'config.json'), 'r', encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def epochs_checkpointed(workdir: str) -> int:
  """The epochs the latest epoch checkpoint of `workdir` completes (0 without one)."""
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return 0
  return max((int(n) for n in os.listdir(directory) if n.isdigit()), default=0)


def is_unfinished_run(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """True if `workdir` holds a run of `config` (its saved config differs in no field that
  changes what is computed) that has not trained all `train.epochs` epochs."""
  saved = saved_config(workdir)
  return (saved is not None and not config_differences(saved, config.to_dict())
          and epochs_checkpointed(workdir) < int(config.train.epochs))


def epochs_done(extra: dict) -> int:
  """The number of epochs a training checkpoint completes, from its `extra` dict (older
  checkpoints store the 0-based index of the last epoch as `epoch`)."""
  if 'epochs_done' in extra:
    return int(extra['epochs_done'])
  return int(extra['epoch']) + 1


class Interrupted(KeyboardInterrupt):
  """Ctrl-C during training; the message says how to resume."""


def state_dtype(config: ml_collections.ConfigDict):
  """The states' dtype of `ep.dtype`.

  Raises:
    ValueError: an unknown name, or 'float64' while JAX runs without 64-bit types (it would
      silently compute in float32): set `JAX_ENABLE_X64=1` or `jax.config.update(
      'jax_enable_x64', True)` before training.
  """
  if config.ep.dtype not in DTYPES:
    raise ValueError(f'unknown ep.dtype {config.ep.dtype!r}; known: {sorted(DTYPES)}')
  if (config.ep.dtype == 'float64'
      and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64):
    raise ValueError("ep.dtype='float64' needs 64-bit JAX (JAX would compute in float32): "
                     'run with JAX_ENABLE_X64=1')
  return DTYPES[config.ep.dtype]


def signals_enabled(config: ml_collections.ConfigDict) -> bool:
  return bool(config.signals.les.enabled or config.signals.kd.enabled)


def make_mesh(batch_size: int, eval_batch_size: int, num_devices: int = 0) -> Mesh:
  """A 1-D 'data' mesh over the first `num_devices` devices (0: all of them).

  Both batch sizes are global and must divide by the device count.
  """
  available = jax.devices()
  if num_devices < 0 or num_devices > len(available):
    raise ValueError(f'train.num_devices={num_devices} but {len(available)} devices are '
                     'visible (0 means all)')
  devices = np.array(available[:num_devices] if num_devices else available)
  for name, size in (('train.batch_size', batch_size), ('train.eval_batch_size',
                                                         eval_batch_size)):
    if size % devices.size:
      raise ValueError(f'{name}={size} is not divisible by the {devices.size} devices; '
                       'choose a multiple of the device count')
  return Mesh(devices, ('data',))


def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """Assembles a globally sharded batch from this process's part (any process count)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


class RunSetup(NamedTuple):
  """The initial train state and what the loop needs to log learning rates."""
  state: TrainState
  tx: Any
  nudging: Any
  rates: Any
  lr_kwargs: dict


def init_model_params(config: ml_collections.ConfigDict, spec: network.NetworkSpec,
                      key: jax.Array) -> dict:
  """The CRNN's initial parameters per `config.model.init` (ep_jax.initialization).

  `init='data'` is resolved beforehand by `calibrated_config` into the gains it chooses.
  """
  m = config.model
  mode = m.get('init', 'pytorch')
  if mode == 'data':
    raise ValueError("model.init='data' is calibrated on training data: pass the config "
                     'through train.calibrated_config first')
  return initialization.init_params(spec, key, mode=mode, scale=m.init_scale,
                                    gains=tuple(m.get('init_gains', ())),
                                    readout_scale=float(m.get('readout_init_scale', 1.0)),
                                    skip_scale=float(m.get('skip_init_scale', 1.0)),
                                    bias_scale=float(m.get('bias_init_scale', 1.0)))


def init_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The parameter-init key of `config.seed` (`build_run` splits the seed the same way)."""
  return jax.random.split(jax.random.PRNGKey(config.seed), 3)[0]


def calibrated_config(config: ml_collections.ConfigDict, train_split: data_lib.Split,
                      info: data_lib.DatasetInfo,
                      print_fn: Optional[Callable[[str], None]] = None
                      ) -> ml_collections.ConfigDict:
  """`config` itself, or for `model.init='data'` a copy with `init='gains'` and the gains
  calibrated (`initialization.calibrate_gains`) on `model.init_batch` training images of
  `train_split`, so that they are computed once and recorded in the config a run saves. The
  chosen gains and activities are printed with `print_fn`.
  """
  m = config.model
  if m.get('init', 'pytorch') != 'data':
    return config
  spec = build.build_spec(config, info)
  params = initialization.init_params(spec, init_key(config), mode='data', scale=m.init_scale,
                                      readout_scale=float(m.get('readout_init_scale', 1.0)),
                                      skip_scale=float(m.get('skip_init_scale', 1.0)),
                                      bias_scale=float(m.get('bias_init_scale', 1.0)))
  n = min(int(m.init_batch), len(train_split))
  order = data_lib.epoch_permutation(len(train_split), config.seed, 0)[:n]
  x = jnp.asarray(data_lib.normalize(train_split.images[order], info))
  _, cal = initialization.calibrate_gains(
      spec, params, x, target=tuple(m.init_target), mode=config.ep.mode,
      max_steps=max(int(config.ep.free_steps), 400), damping=float(config.ep.get('damping', 1.0)),
      solver=build.build_solver(config))
  if print_fn is not None:
    print_fn('init=data: gains ' + ' '.join(f'{g:.3g}' for g in cal.gains) + ' | mean |s| '
             + ' '.join(f'{a:.3f}' for a in cal.activity) + f' | residual {cal.residual:.1e} '
             f'in {cal.steps} steps ({cal.evaluations} relaxations)')
  resolved = copy.deepcopy(config)
  resolved.model.init = 'gains'
  resolved.model.init_gains = tuple(float(m.init_scale) * g for g in cal.gains)
  return resolved


def with_teacher(config: ml_collections.ConfigDict, workdir: str,
                 print_fn: Callable[[str], None] = print) -> ml_collections.ConfigDict:
  """`config` itself, or with `signals.kd.train_teacher` and no `teacher_workdir` a copy whose
  teacher is `workdir/teacher`, trained there first (`teacher.train_from_config`) unless a
  teacher of `config.teacher.epochs` epochs is already there."""
  kd = config.signals.kd
  if not kd.enabled or kd.teacher_workdir or not kd.get('train_teacher', False):
    return config
  teacher_dir = os.path.join(workdir, TEACHER_DIR)
  if teacher.is_trained(teacher_dir, config):
    print_fn(f'[teacher] using the teacher in {teacher_dir}')
  else:
    print_fn(f'[teacher] training the BP twin into {teacher_dir}')
    teacher.train_from_config(config, teacher_dir,
                              print_fn=lambda line: print_fn('[teacher] ' + line))
  resolved = copy.deepcopy(config)
  resolved.signals.kd.teacher_workdir = teacher_dir
  return resolved


def template_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy whose init needs no data: for parameters that a checkpoint then replaces."""
  template = copy.deepcopy(config)
  if template.model.get('init', 'pytorch') == 'data':
    template.model.init = 'pytorch'
  return template


def build_run(config: ml_collections.ConfigDict, spec: network.NetworkSpec,
              steps_per_epoch: int, num_train: Optional[int] = None) -> RunSetup:
  """Parameters, learning signals, optimiser and train state of a run with `config.seed`.

  num_train: the training split's size, needed with `ep.warm_start` (the state then holds a
  zero `free_store` of that many examples).

  `PRNGKey(seed)` splits into init / state / signal keys, so the same seed always gives the
  same initial state (`ep_jax.app.sweep`'s vmapped seeds rely on it). `model.init='data'` must
  be resolved first (`calibrated_config`, or `template_config` when a checkpoint follows).
  """
  num_epochs = int(config.train.epochs)
  init_key, state_key, signal_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  params = init_model_params(config, spec, init_key)
  nudging, frozen = None, {}
  if signals_enabled(config):
    setup = build.build_signals(config.signals, spec, num_epochs=num_epochs, rng=signal_key)
    nudging, frozen = setup.nudging, setup.frozen
    if setup.trainable:
      params = dict(params, signals=setup.trainable)
  o = config.optim
  lr_kwargs = optim.schedule_kwargs(
      schedule=o.schedule, steps_per_epoch=steps_per_epoch, epochs=num_epochs,
      eta_min=o.eta_min, restart_epochs=o.restart_epochs, restart_mult=o.restart_mult,
      decay_epochs=o.get('decay_epochs', 0), schedule_step=o.get('schedule_step', 'step'))
  rates = o.learning_rates if isinstance(o.learning_rates, (int, float)) else tuple(
      o.learning_rates)
  tx = optim.make_optimizer(spec, params, learning_rates=rates, momentum=o.momentum,
                            weight_decay=o.weight_decay,
                            extra_learning_rates={'signals': o.signal_learning_rate},
                            optimizer=o.get('optimizer', 'sgd'), **lr_kwargs)
  store = None
  if config.ep.get('warm_start', False):
    if num_train is None:
      raise ValueError('ep.warm_start needs the number of training examples (num_train)')
    store = free_state_store(spec, num_train, state_dtype(config))
  state = create_train_state(params, tx, state_key, frozen, free_store=store)
  return RunSetup(state, tx, nudging, rates, lr_kwargs)


def epoch_record(*, epoch: int, step: int, train: dict, sums: dict, lrs: list,
                 epoch_time: float, train_time: float, examples: int) -> dict:
  """The `metrics.jsonl` record of one epoch (1-based) from train means and eval sums."""
  count = max(float(sums['count']), 1.0)
  record = {
      'epoch': epoch,
      'step': step,
      'train_loss': float(train['loss']),
      'train_accuracy': float(train['accuracy']),
      'test_loss': float(sums['loss_sum']) / count,
      'test_accuracy': float(sums['correct']) / count,
      'free_steps_mean': float(train['free_steps']),
      'free_residual_mean': float(train['free_residual']),
      'nudged_steps_mean': float(train['nudged_steps']),
      'eval_free_steps_mean': float(sums['free_steps_sum']) / max(float(sums['batches']), 1),
      'grad_norm': float(train['grad_norm']),
      'lr': lrs[0],
      'lrs': lrs,
      'epoch_time_s': epoch_time,
      'train_time_s': train_time,
      'examples_per_s': examples / max(train_time, 1e-9),
  }
  for key, value in train.items():
    if (key.startswith('layer_') or key in ('kappa', 'kd_alpha')
        or (key.endswith('_loss') and key != 'loss')):
      record[key] = jsonable(value)
  return record


def _first_bad_layer(names: tuple, metrics: dict) -> str:
  per_layer = np.asarray(metrics.get('layer_mean_abs_state', []), np.float64)
  for name, value in zip(names, per_layer):
    if not np.isfinite(value):
      return name
  return 'none'


def _bad_param_groups(spec: network.NetworkSpec, params: dict) -> list[str]:
  labels = optim.group_labels(params, spec)
  finite = jax.tree_util.tree_map(lambda p: bool(np.all(np.isfinite(np.asarray(p)))), params)
  bad = {l for l, ok in zip(jax.tree_util.tree_leaves(labels), jax.tree_util.tree_leaves(finite))
         if not ok}
  return sorted(bad) or ['none']


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize` with the config's explicit cluster, if any.

  With `train.coordinator_address` (host:port of process 0), `train.num_processes` and
  `train.process_id` set, they are passed on (a manual launch, e.g. several processes on one
  machine); unset, JAX detects the cluster (SLURM, Open MPI, TPU pods, or the
  JAX_COORDINATOR_ADDRESS environment variable with a cluster environment).
  """
  t = config.train
  kwargs = {}
  if t.get('coordinator_address', ''):
    kwargs['coordinator_address'] = t.coordinator_address
  if int(t.get('num_processes', 0)) > 0:
    kwargs['num_processes'] = int(t.num_processes)
  if int(t.get('process_id', -1)) >= 0:
    kwargs['process_id'] = int(t.process_id)
  jax.distributed.initialize(**kwargs)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       print_fn: Callable[[str], None] = print,
                       resume_command: str = '') -> dict:
  """Trains per `config`, writes everything to `workdir`, returns the last epoch record.

  The config is checked (`check_config`) and, for a workdir with checkpoints, compared with
  the run's saved config (`check_resume`) before any data is loaded; nothing is written to
  the workdir until the checkpoint is restored. A workdir this call created is removed again
  if it is still empty when the call fails. Ctrl-C raises `Interrupted`, whose message says
  from which epoch and step `resume_command` (default: "the same command") resumes.
  """
  check_config(config)
  workdir = os.path.abspath(workdir)
  created = not os.path.exists(workdir)
  _check_writable(workdir)
  resuming = has_checkpoints(workdir)
  if resuming:
    check_resume(config, workdir)
  if config.train.multihost:
    initialize_distributed(config)
  try:
    return _train_and_evaluate(config, workdir, print_fn, resuming, resume_command)
  except BaseException:
    if created and jax.process_index() == 0:
      _remove_empty_dirs(workdir)
    raise


class _Position:
  """Where a run is, for the Ctrl-C message: the epoch in progress, the epochs checkpointed,
  and the steps of the epoch in progress saved in a mid-epoch checkpoint (of
  `steps_per_epoch`)."""
  epoch: int | None = None
  done: int = 0
  mid_steps: int = 0
  steps_per_epoch: int = 0


class _DeferredInterrupt:
  """Ctrl-C (SIGINT) as a request, acted on between steps: the first one sets `pending`, and
  `check()` (called after each train step and after each epoch's checkpoint) raises
  KeyboardInterrupt, so a checkpoint is never cut off mid-write and the train state is whole;
  a second Ctrl-C raises at once. Outside the main thread it does nothing."""

  def __init__(self):
    self.pending = False
    self._previous = None

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    if self.pending:
      raise KeyboardInterrupt
    self.pending = True
    sys.stderr.write('stopping after the current step (Ctrl-C again stops at once)\n')

  def check(self) -> None:
    if self.pending:
      raise KeyboardInterrupt

  def install(self) -> None:
    if self._previous is None and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handler)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, print_fn,
                        resuming: bool, resume_command: str = '') -> dict:
  position = _Position()
  interrupt = _DeferredInterrupt()  # installed once training starts
  try:
    with interrupt:
      return _train_loop(config, workdir, print_fn, resuming, position, interrupt)
  except KeyboardInterrupt:
    run = f'run: {resume_command}' if resume_command else 'run the same command'
    if position.mid_steps:
      advice = (f'to resume epoch {position.done + 1} after its step '
                f'{position.mid_steps}/{position.steps_per_epoch} {run}')
    elif position.done >= 1:
      advice = f'to resume from epoch {position.done + 1} {run}'
    else:
      advice = f'no epoch was completed; to start again {run}'
    where = ('before training started' if position.epoch is None else
             f'at epoch {position.epoch}/{int(config.train.epochs)}')
    raise Interrupted(f'interrupted {where}; {advice}') from None


def _open_mid_epoch(workdir: str, resuming: bool) -> tuple[Checkpointer | None, int | None]:
  """The mid-epoch checkpointer and its latest step, if the workdir has one (reads only)."""
  if not (resuming and has_checkpoints(workdir, MID_EPOCH_DIR)):
    return None, None
  checkpointer = Checkpointer(os.path.join(workdir, MID_EPOCH_DIR), max_to_keep=1)
  return checkpointer, checkpointer.latest_step()


def _state_is_live(state) -> bool:
  """False if a leaf of `state` was donated to a step that did not return (Ctrl-C)."""
  return not any(getattr(leaf, 'is_deleted', lambda: False)()
                 for leaf in jax.tree_util.tree_leaves(state))


def _train_loop(config: ml_collections.ConfigDict, workdir: str, print_fn, resuming: bool,
                position: _Position, interrupt: _DeferredInterrupt | None = None) -> dict:
  is_primary = jax.process_index() == 0
  checkpoint_dir = os.path.join(workdir, CHECKPOINT_DIR)
  num_epochs = int(config.train.epochs)
  train_split, test_split, info = build.load_data(config)
  checkpointer = (Checkpointer(checkpoint_dir, max_to_keep=config.train.checkpoints_to_keep)
                  if resuming and has_checkpoints(workdir, CHECKPOINT_DIR) else None)
  latest = checkpointer.latest_step() if checkpointer is not None else None
  mid_checkpointer, mid_latest = _open_mid_epoch(workdir, resuming)
  # The data init is calibrated once, on the whole training set (before any host sharding),
  # and not again when a checkpoint supplies the parameters.
  run_config = (template_config(config) if latest is not None or mid_latest is not None else
                calibrated_config(config, train_split, info, print_fn if is_primary else None))
  # Each host reads its own strided shard: of the training set in the grain pipeline (below),
  # of the test set here.
  shard = (jax.process_index(), jax.process_count())
  if jax.process_count() > 1:
    test_size = len(test_split)
    test_split = data_lib.split_for_process(test_split, jax.process_index(),
                                            jax.process_count(), drop_remainder=False)
  spec = build.build_spec(config, info)
  ep = build.build_ep_config(config)
  dtype = state_dtype(config)
  batch_size, eval_batch_size = config.train.batch_size, config.train.eval_batch_size
  mesh = make_mesh(batch_size, eval_batch_size, config.train.num_devices)
  local_batch = batch_size // jax.process_count()
  local_eval_batch = eval_batch_size // jax.process_count()
  steps_per_epoch = (len(train_split) // jax.process_count()) // local_batch
  total_steps = steps_per_epoch * num_epochs
  run_config = with_teacher(run_config, workdir, print_fn if is_primary else (lambda _: None))
  run = build_run(run_config, spec, steps_per_epoch, num_train=len(train_split))
  state, tx, nudging = run.state, run.tx, run.nudging
  rates, lr_kwargs = run.rates, run.lr_kwargs

  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
  state = jax.device_put(state, replicated)
  start_epoch, start_step, data_state, partial = 0, 0, None, None
  restored_from = None
  # Restored before anything in the workdir is written.
  if latest is not None:
    state, extra = checkpointer.restore(state, step=latest)
    start_epoch = epochs_done(extra)
    restored_from = f'{checkpointer.directory}/{latest} after epoch {start_epoch}/{num_epochs}'
  if mid_latest is not None:
    mid_state, mid_extra = mid_checkpointer.restore(state, step=mid_latest)
    if int(mid_extra['epochs_done']) >= start_epoch:  # later than the last epoch's checkpoint
      state, start_epoch = mid_state, int(mid_extra['epochs_done'])
      start_step, data_state = int(mid_extra['steps_in_epoch']), mid_extra['data_iterator']
      partial = mid_extra['train_partial']
      restored_from = (f'{mid_checkpointer.directory}/{mid_latest} after step '
                       f'{start_step}/{steps_per_epoch} of epoch {start_epoch + 1}')
  state = jax.device_put(state, replicated)
  position.done, position.mid_steps = start_epoch, start_step
  position.steps_per_epoch = steps_per_epoch
  if is_primary and restored_from:
    print_fn(f'resumed from {restored_from}'
             + (' (the run is complete)' if start_epoch >= num_epochs else ''))
  train_step = jax.jit(
      make_train_step(spec, ep, tx, nudging=nudging, steps_per_epoch=steps_per_epoch,
                      state_dtype=dtype),
      in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
      donate_argnums=0)
  eval_step = jax.jit(make_eval_step(spec, ep, state_dtype=dtype),
                      in_shardings=(replicated, batch_sharding), out_shardings=replicated)
  # The nudge's split into output and signal parts, once per epoch on its last batch.
  nudge_split = make_nudge_split(spec, ep, nudging, steps_per_epoch=steps_per_epoch,
                                 state_dtype=dtype)
  if nudge_split is not None:
    nudge_split = jax.jit(nudge_split, in_shardings=(replicated, batch_sharding),
                          out_shardings=replicated)
  last_batch = {}

  writer = MetricsWriter(workdir, is_primary=is_primary, layer_names=spec.layer_names)
  writer.write_config(config.to_dict())
  if checkpointer is None:
    checkpointer = Checkpointer(checkpoint_dir, max_to_keep=config.train.checkpoints_to_keep)
  if latest is not None or mid_latest is not None or writer.history:
    writer.truncate_after(start_epoch)  # records count epochs from 1, as checkpoints

  if is_primary:
    print_fn(f'ep_jax: {info.name} {info.input_shape} -> {info.num_classes} classes, '
             f'{info.num_train} train / {info.num_test} test; layout {spec.layout!r} '
             f'dense {spec.dense}'
             + (f' skips (1-based conv) {tuple((i + 1, j + 1) for i, j in spec.skips)}'
                if spec.skips else '') + f'; {estimators.describe(ep)} '
             f'tol={ep.tol}; {mesh.devices.size} device(s); '
             f'workdir {workdir}')
  progress = ProgressReporter(total_steps, every_seconds=config.train.log_every_seconds,
                              print_fn=print_fn if is_primary else (lambda _: None),
                              steps_per_epoch=steps_per_epoch)
  # Every host runs the same number of eval steps (shards differ in size by at most one).
  num_eval = (math.ceil(math.ceil(test_size / jax.process_count()) / local_eval_batch)
              if jax.process_count() > 1 else data_lib.num_eval_batches(test_split,
                                                                        local_eval_batch))
  record: dict = writer.history[-1] if writer.history else {}
  if start_epoch >= num_epochs:
    return _finish(record, print_fn, is_primary, writer)
  # One grain pipeline for the whole run; its iterator's position is checkpointed mid-epoch.
  batches = data_lib.train_iterator(
      data_lib.train_dataset(train_split, info, batch_size=local_batch, num_epochs=num_epochs,
                             seed=config.seed, shard=shard, **build.augmentation(config)),
      prefetch=config.data.prefetch, state=data_state, start=start_epoch * steps_per_epoch)
  if interrupt is not None:
    interrupt.install()  # from here on Ctrl-C stops between steps
  every = int(config.train.get('checkpoint_every_steps', 0))
  # Time-based mid-epoch checkpoints on one process only: processes would disagree on the time,
  # and every process must join a save.
  every_s = (float(config.train.get('checkpoint_every_seconds', 0.0))
             if jax.process_count() == 1 else 0.0)
  last_save = time.time()
  examples_done = 0
  place = lambda batch: to_global(batch, batch_sharding)
  for epoch in range(start_epoch, num_epochs):
    epoch_start = time.time()
    first = start_step if epoch == start_epoch else 0
    prior = partial if epoch == start_epoch else None
    run = EpochRun(state)
    data_position = None

    def save_mid_epoch() -> None:
      nonlocal mid_checkpointer
      if mid_checkpointer is None:
        mid_checkpointer = Checkpointer(os.path.join(workdir, MID_EPOCH_DIR), max_to_keep=1)
      done = first + len(run.per_step)
      if done in (0, steps_per_epoch) or epoch * steps_per_epoch + done in (
          mid_checkpointer.all_steps()):
        return
      means = mean_over_steps(run.per_step, prior=prior)
      mid_checkpointer.save(epoch * steps_per_epoch + done, run.state, extra={
          'epochs_done': epoch, 'steps_in_epoch': done, 'data_iterator': data_position,
          'train_partial': {'count': done, 'means': {k: np.asarray(v).tolist()
                                                     for k, v in means.items()}},
          'seed': config.seed})
      position.mid_steps = done

    def on_step(run: EpochRun) -> None:
      nonlocal data_position, last_save
      data_position = batches.get_state()
      if ((every > 0 and (first + len(run.per_step)) % every == 0)
          or (every_s > 0 and time.time() - last_save >= every_s)):
        save_mid_epoch()
        last_save = time.time()
      if interrupt is not None:
        interrupt.check()

    def step_keeping_batch(s, b):
      last_batch['batch'] = place(b)
      return train_step(s, last_batch['batch'])

    position.epoch = epoch + 1
    if epoch == start_epoch and is_primary:
      print_fn(f'epoch {epoch + 1}/{num_epochs}: compiling the train step (the first step takes '
               'a while)')
    try:
      run_epoch(step_keeping_batch, run, batches,
                num_steps=steps_per_epoch - first, examples_per_step=batch_size,
                progress=progress, first_step=epoch * steps_per_epoch + first,
                examples_before=examples_done, epoch=epoch + 1, on_step=on_step)
    except KeyboardInterrupt:
      if run.per_step and _state_is_live(run.state):
        save_mid_epoch()  # the same command resumes after the last finished step
      raise
    state, per_step = run.state, run.per_step
    examples_done += len(per_step) * batch_size
    train = mean_over_steps(per_step, prior=prior)
    train_time = time.time() - epoch_start
    if not (np.all(np.asarray(jax.device_get([m['finite'] for m in per_step])))
            and np.isfinite(train['loss'])):
      bad = next(i for i, m in enumerate(jax.device_get(per_step))
                 if not (bool(m['finite']) and np.isfinite(m['loss'])))
      raise NonFiniteError(
          f'non-finite training at epoch {epoch + 1}/{num_epochs}, step '
          f'{first + bad + 1}/{steps_per_epoch}: '
          f'first layer with non-finite states: '
          f'{_first_bad_layer(spec.layer_names, jax.device_get(per_step[bad]))}; layers with '
          f'non-finite parameters: {_bad_param_groups(spec, state.params)}; the last good '
          f'checkpoint is kept in {checkpointer.directory} (after epochs '
          f'{checkpointer.all_steps()}); lower the learning rates or beta')
    check_convergence(config, spec, train, epoch=epoch + 1, checkpoints=checkpointer.directory,
                      steps=checkpointer.all_steps())
    if nudge_split is not None and last_batch:
      train.update(jax.device_get(nudge_split(state, last_batch['batch'])))

    sums = evaluate(eval_step, state.params, map(place, data_lib.eval_batches(
        test_split, info, batch_size=local_eval_batch, prefetch=config.data.prefetch,
        num_batches=num_eval)))
    rates_now = optim.current_learning_rates(
        spec, learning_rates=rates, step=int(state.step), **lr_kwargs)
    record = epoch_record(epoch=epoch + 1, step=int(state.step), train=train, sums=sums,
                          lrs=rates_now, epoch_time=time.time() - epoch_start,
                          train_time=train_time, examples=len(per_step) * batch_size)
    writer.write(record)
    # Checkpoints are named by the number of epochs they complete (1-based, as the records).
    checkpointer.save(epoch + 1, state, extra={'epochs_done': epoch + 1, 'seed': config.seed},
                      metrics={'test_accuracy': record['test_accuracy']})
    position.done, position.mid_steps = epoch + 1, 0
    last_save = time.time()
    if mid_checkpointer is not None:  # superseded by the epoch's checkpoint
      mid_checkpointer.close()
      mid_checkpointer = None
      if is_primary:
        shutil.rmtree(os.path.join(workdir, MID_EPOCH_DIR), ignore_errors=True)
    if is_primary:
      print_fn(f'epoch {epoch + 1}/{num_epochs}: train loss {record["train_loss"]:.4f} '
               f'acc {percent(record["train_accuracy"])} | test loss {record["test_loss"]:.4f} '
               f'acc {percent(record["test_accuracy"])} | free steps '
               f'{record["free_steps_mean"]:.1f} | {record["examples_per_s"]:.0f} ex/s | '
               f'{record["epoch_time_s"]:.1f} s')
    if interrupt is not None:
      interrupt.check()
  return _finish(record, print_fn, is_primary, writer)


def _finish(record: dict, print_fn, is_primary: bool, writer: MetricsWriter) -> dict:
  """Draws `layers.png`, closes the writer and prints where the figures are."""
  final = record.get('test_accuracy', float('nan'))
  layers = writer.write_layers()
  writer.close()
  if is_primary:
    print_fn(f'curves: {writer.curves_path}'
             + (f'; per-layer diagnostics: {layers}' if layers else '')
             + f'; to overlay runs: python -m experiments.plots --workdir={writer.workdir} '
             '--workdir=OTHER_RUN')
    print_fn(f'final test_accuracy={final}')
  return record
