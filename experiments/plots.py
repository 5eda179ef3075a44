r"""Per-layer training diagnostics over epochs, overlaying several runs.

  python -m experiments.plots --workdir=runs/a [--workdir=runs/b ...] [--out=DIR]

Reads each workdir's `metrics.jsonl` (written by `ep_jax.app.train`; a teacher workdir of
`experiments.train_teacher` contributes its accuracy history from `teacher.json`) and draws,
into `--out` (default: the first workdir), one PNG per diagnostic:

  layer_mean_abs_state.png   mean |s_l| at the free fixed point
  layer_mean_abs_theta.png   mean |θ_l|: weights, bias and the links into layer l
  layer_nudge.png            nudge per unit ‖ds_l/dβ‖ / √n_l (the estimator's stencil on the
                             states: ½‖s^β − s^{−β}‖ / (β√n_l) symmetric, ‖s^β − s^0‖ / (β√n_l)
                             one-sided)
  layer_zero_frac.png        fraction of units at 0
  layer_one_frac.png         fraction of units at 1 (0 for an unbounded activation)
  layer_input_share.png      share of the mean square s_l that varies across inputs, in [0, 1)
  layer_nudged_residual.png  final residual of the nudged phases (max over the phases)
  free_steps_mean.png        free-phase steps used
  free_residual_mean.png     final free-phase residual
  accuracy.png               train and test accuracy

(one subplot per layer for the `layer_*` ones), plus, when some run logged them,
`layer_nudge_output.png` and `layer_nudge_signal.png` (the nudge's parts from the output error
and from the layer-wise signals, on one batch at each epoch's end), `kappa.png`,
`les_loss.png`, `kd_loss.png`, and the older records' `layer_nudge_norm.png`,
`layer_mean_abs_param.png`, `layer_saturated_frac.png`, `layer_input_dependence.png`, titled
with their own definitions. Each run is one line (legend: the workdir's base name). Missing
values (`null`, NaN) are gaps; runs may have different layer counts (a subplot shows the runs
that have that layer); a run without a metric is left out of that plot.
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterable, Optional, Sequence

import numpy as np
from absl import app, flags

from ep_jax.app.metrics_io import integer_ticks, read_metrics
from experiments import cli

LAYER_KEYS = ('layer_mean_abs_state', 'layer_mean_abs_theta', 'layer_nudge', 'layer_zero_frac',
              'layer_one_frac', 'layer_input_share', 'layer_nudged_residual')
# Drawn when some run has them: the nudge's split, the signals' metrics, and older records'
# keys (their definitions differ from the current ones: see TITLES).
OPTIONAL_LAYER_KEYS = ('layer_nudge_output', 'layer_nudge_signal', 'kappa', 'les_loss',
                       'kd_loss')
LEGACY_LAYER_KEYS = ('layer_nudge_norm', 'layer_mean_abs_param', 'layer_saturated_frac',
                     'layer_input_dependence')
SCALAR_KEYS = ('free_steps_mean', 'free_residual_mean')
TITLES = {
    'layer_mean_abs_state': 'mean |s| (free fixed point)',
    'layer_mean_abs_theta': 'mean |θ| (weights, bias, links into the layer)',
    'layer_nudge': 'nudge per unit ‖ds/dβ‖ / √n (estimator\'s stencil)',
    'layer_nudge_output': 'nudge per unit from the output error (epoch end, one batch)',
    'layer_nudge_signal': 'nudge per unit from the layer-wise signals (epoch end, one batch)',
    'layer_zero_frac': 'fraction of units at 0',
    'layer_one_frac': 'fraction of units at 1',
    'layer_input_share': 'share of mean s² varying across inputs',
    'layer_nudged_residual': 'nudged phases\' final residual (max over phases)',
    'layer_nudge_norm': 'older runs: ‖s^β − s^0‖ per example (first nudged phase, not /β)',
    'layer_mean_abs_param': 'older runs: mean |w| (weights only)',
    'layer_saturated_frac': 'older runs: fraction of units at 0 or 1',
    'layer_input_dependence': 'older runs: std across inputs / mean |s|',
    'free_steps_mean': 'free-phase steps',
    'free_residual_mean': 'free-phase final residual',
    'kappa': 'κ',
    'les_loss': 'LES loss ℓ_l',
    'kd_loss': 'KD loss ℓ_l',
}
# Quantities spanning orders of magnitude: log y axis (when they have positive values).
LOG_KEYS = ('layer_mean_abs_state', 'layer_mean_abs_theta', 'layer_nudge', 'layer_nudge_output',
            'layer_nudge_signal', 'layer_nudged_residual', 'layer_mean_abs_param',
            'layer_nudge_norm', 'free_residual_mean')


class Run:
  """One workdir's records. label: legend name. layer_names: from config.json when known."""

  def __init__(self, workdir: str, label: str, records: list[dict],
               layer_names: Optional[Sequence[str]] = None):
    self.workdir = workdir
    self.label = label
    self.records = records
    self.layer_names = tuple(layer_names or ())


def _layer_names_from_config(workdir: str) -> tuple[str, ...]:
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path, 'r', encoding='utf-8') as f:
      model = json.load(f)['model']
    from ep_jax.app.build import model_layer_names  # pylint: disable=g-import-not-at-top
    return model_layer_names(model)
  except (OSError, ValueError, KeyError, TypeError):
    return ()


def _teacher_records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'teacher.json')
  try:
    with open(path, 'r', encoding='utf-8') as f:
      history = json.load(f).get('history', [])
  except (OSError, ValueError):
    return []
  return [dict(r) for r in history if isinstance(r, dict)]


def run_labels(workdirs: Sequence[str]) -> list[str]:
  """Base names of the workdirs; where two coincide, `parent/base`."""
  norm = [os.path.normpath(os.path.abspath(w)) for w in workdirs]
  labels = [os.path.basename(w) for w in norm]
  for i, label in enumerate(labels):
    if labels.count(label) > 1:
      labels[i] = os.path.join(os.path.basename(os.path.dirname(norm[i])), label)
  return labels


def load_runs(workdirs: Sequence[str], labels: Optional[Sequence[str]] = None) -> list[Run]:
  """One `Run` per workdir (empty records if it has no metrics)."""
  labels = list(labels) if labels else run_labels(workdirs)
  runs = []
  for workdir, label in zip(workdirs, labels):
    records = read_metrics(workdir) or _teacher_records(workdir)
    runs.append(Run(workdir, label, records, _layer_names_from_config(workdir)))
  return runs


def _to_float(value) -> float:
  if value is None or isinstance(value, (str, bool, dict, list)):
    return math.nan
  try:
    out = float(value)
  except (TypeError, ValueError):
    return math.nan
  return out if math.isfinite(out) else math.nan


def scalar_series(records: Iterable[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """`(epochs, values)` of a scalar metric; non-numbers and None become NaN (gaps)."""
  xs, ys = [], []
  for i, rec in enumerate(records):
    if key not in rec:
      continue
    x = _to_float(rec.get('epoch', i + 1))
    if math.isnan(x):
      continue
    xs.append(x)
    ys.append(_to_float(rec[key]))
  return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def layer_series(records: Iterable[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """`(epochs (E,), values (E, L))` of a per-layer metric, L the longest list; gaps are NaN."""
  xs, rows = [], []
  for i, rec in enumerate(records):
    value = rec.get(key)
    if value is None:
      continue
    x = _to_float(rec.get('epoch', i + 1))
    if math.isnan(x):
      continue
    row = [_to_float(v) for v in value] if isinstance(value, (list, tuple)) else [
        _to_float(value)]
    xs.append(x)
    rows.append(row)
  width = max((len(r) for r in rows), default=0)
  values = np.full((len(rows), width), np.nan)
  for i, row in enumerate(rows):
    values[i, :len(row)] = row
  return np.asarray(xs, np.float64), values


def _new_figure(panels: int, max_cols: int = 4, size=(4.0, 3.0)):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  cols = max(1, min(max_cols, panels))
  rows = max(1, -(-panels // cols))
  fig = Figure(figsize=(size[0] * cols, size[1] * rows), dpi=100)
  FigureCanvasAgg(fig)
  return fig, rows, cols


def _set_scale(ax, ys_all: list[np.ndarray], log: bool) -> None:
  if not log:
    return
  finite = np.concatenate([y[np.isfinite(y)] for y in ys_all]) if ys_all else np.zeros(0)
  if finite.size and np.any(finite > 0):
    ax.set_yscale('log')


def _save(fig, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    fig.savefig(f, format='png')
  os.replace(tmp, path)


def _colors(n: int) -> list:
  import matplotlib  # pylint: disable=g-import-not-at-top
  cmap = matplotlib.colormaps['tab10']
  return [cmap(i % 10) for i in range(n)]


def plot_layer_metric(runs: Sequence[Run], key: str, path: str,
                      title: Optional[str] = None, log: Optional[bool] = None) -> bool:
  """One subplot per layer, one line per run. Returns False (no file) when no run has `key`."""
  series = [(run, *layer_series(run.records, key)) for run in runs]
  series = [(run, xs, ys) for run, xs, ys in series if xs.size and ys.shape[1]]
  if not series:
    return False
  num_layers = max(ys.shape[1] for _, _, ys in series)
  colors = _colors(len(runs))
  color_of = {id(run): colors[i] for i, run in enumerate(runs)}
  log = key in LOG_KEYS if log is None else log
  fig, rows, cols = _new_figure(num_layers)
  for l in range(num_layers):
    ax = fig.add_subplot(rows, cols, l + 1)
    name = next((run.layer_names[l] for run, _, _ in series if l < len(run.layer_names)),
                f'layer {l + 1}')
    drawn = []
    for run, xs, ys in series:
      if l >= ys.shape[1] or not np.any(np.isfinite(ys[:, l])):
        continue
      ax.plot(xs, ys[:, l], marker='o', markersize=2.5, linewidth=1.2, color=color_of[id(run)],
              label=run.label)
      drawn.append(ys[:, l])
    _set_scale(ax, drawn, log)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel('epoch')
    integer_ticks(ax)
    ax.grid(True, alpha=0.3)
    if l == 0:
      ax.legend(fontsize=7)
  fig.suptitle(title or TITLES.get(key, key))
  _save(fig, path)
  return True


def plot_scalar_metrics(runs: Sequence[Run], keys: Sequence[str], path: str,
                        title: Optional[str] = None, log: Optional[bool] = None) -> bool:
  """One subplot per key, one line per run (style per key when several keys share a panel).

  Returns False (no file) when no run has any of `keys`.
  """
  colors = _colors(len(runs))
  fig, rows, cols = _new_figure(1, size=(6.0, 4.0))
  ax = fig.add_subplot(1, 1, 1)
  styles = ['-', '--', ':', '-.']
  drawn = []
  for k, key in enumerate(keys):
    for i, run in enumerate(runs):
      xs, ys = scalar_series(run.records, key)
      if not xs.size or not np.any(np.isfinite(ys)):
        continue
      label = run.label if len(keys) == 1 else f'{run.label} {key}'
      ax.plot(xs, ys, styles[k % len(styles)], marker='o', markersize=2.5, color=colors[i],
              label=label)
      drawn.append(ys)
  if not drawn:
    return False
  use_log = (any(key in LOG_KEYS for key in keys)) if log is None else log
  _set_scale(ax, drawn, use_log)
  ax.set_xlabel('epoch')
  integer_ticks(ax)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title(title or ', '.join(TITLES.get(k, k) for k in keys))
  _save(fig, path)
  return True


def plot_runs(workdirs: Sequence[str], out: Optional[str] = None,
              labels: Optional[Sequence[str]] = None) -> list[str]:
  """Draws every diagnostic of `workdirs` into `out` (default: the first); returns the paths."""
  if not workdirs:
    raise ValueError('plot_runs needs at least one workdir')
  out = out or workdirs[0]
  runs = load_runs(workdirs, labels)
  written = []
  present = {k for run in runs for rec in run.records for k in rec}
  optional = OPTIONAL_LAYER_KEYS + LEGACY_LAYER_KEYS
  for key in LAYER_KEYS + tuple(k for k in optional if k in present):
    path = os.path.join(out, f'{key}.png')
    if plot_layer_metric(runs, key, path):
      written.append(path)
  for key in SCALAR_KEYS:
    path = os.path.join(out, f'{key}.png')
    if plot_scalar_metrics(runs, (key,), path):
      written.append(path)
  path = os.path.join(out, 'accuracy.png')
  if plot_scalar_metrics(runs, ('test_accuracy', 'train_accuracy'), path,
                         title='accuracy (solid: test, dashed: train)', log=False):
    written.append(path)
  return written


def define_flags() -> None:
  """The command line's flags (defined only when run as a program, so that importing this
  module next to another program's `--workdir` does not clash)."""
  flags.DEFINE_multi_string('workdir', None, 'A run folder (repeat to overlay runs).')
  flags.DEFINE_string('out', None, 'Where the PNGs go (default: the first --workdir).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdirs, out = flags.FLAGS.workdir, flags.FLAGS.out
  if not workdirs:
    raise app.UsageError('give at least one --workdir')
  for w in workdirs:
    if not os.path.isdir(w):
      raise app.UsageError(f'--workdir {w!r} is not a folder')
  paths = plot_runs(workdirs, out)
  for path in paths:
    print(path)
  if not paths:
    print('no metrics found in ' + ', '.join(workdirs))


if __name__ == '__main__':
  cli.run(main, define_flags)
