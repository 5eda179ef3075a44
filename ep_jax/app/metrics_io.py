"""Metric logging for training runs: JSONL, TensorBoard, PNG curves, progress.

Files written by :class:`MetricsWriter` under ``workdir``:

* ``metrics.jsonl``   -- one JSON object per epoch record (append-only; fsynced).
* ``tensorboard/``    -- tensorboardX event files, one scalar per numeric field
  (nested dicts are flattened as ``outer/inner``), and one per layer of each per-layer list
  (``layer_*``, ``kappa``, ``les_loss``, ``kd_loss``) as ``layer/<name>/<metric>``
  (``layer_`` dropped: ``layer/conv1/nudge``), ``global_step = epoch``.
* ``curves.png``      -- redrawn from the full history after every record.
* ``layers.png``      -- :meth:`MetricsWriter.write_layers` (:func:`plot_layers`).
* ``config.json``     -- :meth:`MetricsWriter.write_config` (sorted, indented).

NaN / inf convention
--------------------
JSON has no NaN/Infinity tokens, so every non-finite float (NaN, +inf, -inf)
anywhere in a record is written to ``metrics.jsonl`` as ``null`` and therefore
comes back from :func:`read_metrics` as ``None``.  :func:`plot_curves` treats
``None`` as a gap.  TensorBoard receives the original float (it displays NaN).

Record keys
-----------
Records should contain ``epoch`` (int).  :func:`plot_curves` draws
``train_loss``/``test_loss`` and ``train_accuracy``/``test_accuracy`` (also
accepted: nested ``{"train": {"loss": ...}}`` i.e. ``train/loss``); missing
series are simply not drawn.

Only the primary process should write files: construct the writer with
``is_primary=(jax.process_index() == 0)``; on other processes every method is
a no-op.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import tempfile
import time
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "MetricsWriter",
    "ProgressReporter",
    "integer_ticks",
    "plot_curves",
    "plot_layers",
    "read_metrics",
    "METRICS_FILE",
    "TENSORBOARD_DIR",
    "CURVES_FILE",
    "LAYERS_FILE",
    "LAYER_PANELS",
    "PER_LAYER_KEYS",
    "CONFIG_FILE",
    "jsonable",
    "percent",
]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"
LAYERS_FILE = "layers.png"
# Per-layer lists that TensorBoard gets one scalar per layer of, besides the ``layer_*`` keys.
PER_LAYER_KEYS = ("kappa", "les_loss", "kd_loss")
CONFIG_FILE = "config.json"


# --------------------------------------------------------------------------
# JSON helpers
# --------------------------------------------------------------------------


def jsonable(obj: Any, strict: bool = False) -> Any:
    """Plain-JSON version of ``obj`` (mappings, sequences, numpy/jax scalars and arrays,
    ConfigDicts); non-finite floats become ``None``. Any other object becomes its ``str``, or
    with ``strict`` raises ``TypeError``."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, strict) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, strict) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj
    if hasattr(obj, "to_dict") and callable(obj.to_dict):  # ml_collections
        return jsonable(obj.to_dict(), strict)
    if hasattr(obj, "__array__") or isinstance(obj, (float, np.generic)):
        arr = np.asarray(obj)
        if arr.ndim > 0:
            return [jsonable(v, strict) for v in arr.tolist()]
        value = arr.item()
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    if strict:
        raise TypeError(f"{type(obj).__name__} object is not JSON serialisable: {obj!r}")
    return str(obj)


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _scalar(v: Any) -> float | None:
    """float(v) for real numeric scalars (incl. NaN), else None."""
    if v is None or isinstance(v, (str, bool)):
        return None
    try:
        arr = np.asarray(v)
    except Exception:  # noqa: BLE001
        return None
    if arr.ndim != 0 or arr.dtype.kind not in "iuf":
        return None
    return float(arr)


def _atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """Reads ``workdir/metrics.jsonl`` (``[]`` if absent).

    ``null`` values (written for NaN/inf) come back as ``None``.  Malformed
    lines (e.g. a line truncated by a crash mid-write) are skipped with a
    warning.
    """
    path = os.path.join(os.fspath(workdir), METRICS_FILE)
    if not os.path.exists(path):
        return []
    records: list[dict] = []
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{lineno}: skipping malformed line {line[:80]!r}")
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


# --------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------


def _series(history: Sequence[Mapping[str, Any]], key: str, x_key: str):
    alt = key.replace("_", "/", 1)
    xs, ys = [], []
    for rec in history:
        flat = _flatten(rec)
        x = _scalar(flat.get(x_key))
        if x is None:
            continue
        if key in flat:
            y = _scalar(flat[key])
        elif alt in flat:
            y = _scalar(flat[alt])
        else:
            continue
        xs.append(x)
        ys.append(math.nan if y is None else y)  # None (NaN/inf) -> gap
    return xs, ys


def plot_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    x_key: str = "epoch",
    loss_keys: Iterable[str] = ("train_loss", "test_loss"),
    accuracy_keys: Iterable[str] = ("train_accuracy", "test_accuracy"),
    title: str | None = None,
):
    """Draws loss (left) and accuracy (right) vs ``x_key`` into ``path`` (PNG), ticks at
    whole epochs; returns the matplotlib ``Figure``.

    Uses the Agg canvas directly (no pyplot global state), and writes to a
    temporary file first so a reader never sees a half-written PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    panels = (("loss", loss_keys), ("accuracy", accuracy_keys))
    for i, (name, keys) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        drawn = False
        for key in keys:
            xs, ys = _series(history, key, x_key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
                drawn = True
        ax.set_xlabel(x_key)
        integer_ticks(ax)
        ax.set_ylabel(name)
        ax.set_title(f"{name} vs {x_key}")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend()
    if title:
        fig.suptitle(title)
    _save_png(fig, path)
    return fig


def integer_ticks(ax: Any) -> None:
    """Ticks at whole numbers only (epochs)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save_png(fig, path) -> None:
    """``fig`` into ``path`` by way of a temporary file (a reader never sees half a PNG)."""
    fig.tight_layout()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# (title, [(key, line style, tag)], log scale): the panels of ``plot_layers``, each drawing
# those of its keys the history has; the series with tag '' names the layers in the legend.
LAYER_PANELS = (
    ("mean |s| (free fixed point)", (("layer_mean_abs_state", "-", ""),), True),
    ("nudge per unit ‖ds/dβ‖/√n (solid: total, dashed: output error's part, end of epoch)",
     (("layer_nudge", "-", ""), ("layer_nudge_output", "--", " output")), True),
    ("mean |θ| (weights, bias, links into the layer)",
     (("layer_mean_abs_theta", "-", ""),), True),
    ("units at 0 (solid) and at 1 (dashed)",
     (("layer_zero_frac", "-", ""), ("layer_one_frac", "--", " at 1")), False),
)
# Older records' keys, drawn with their own definitions where the new ones are missing.
LEGACY_LAYER_PANELS = {
    "layer_nudge": ("‖s^β − s^0‖ per example (older runs: not per unit, not /β)",
                    "layer_nudge_norm"),
    "layer_mean_abs_theta": ("mean |w| (older runs: weights only)", "layer_mean_abs_param"),
    "layer_zero_frac": ("units at 0 or 1 (older runs: together)", "layer_saturated_frac"),
}


def _layer_rows(history: Sequence[Mapping[str, Any]], key: str, x_key: str):
    """``(xs (E,), values (E, L))`` of a per-layer list, NaN for gaps; None if absent."""
    xs, rows = [], []
    for rec in history:
        value, x = rec.get(key), _scalar(rec.get(x_key))
        if x is None or not isinstance(value, (list, tuple)):
            continue
        xs.append(x)
        rows.append([math.nan if _scalar(v) is None else _scalar(v) for v in value])
    if not rows:
        return None
    width = max(len(r) for r in rows)
    values = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        values[i, : len(row)] = row
    return np.asarray(xs), values


def plot_layers(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    layer_names: Sequence[str] = (),
    x_key: str = "epoch",
) -> bool:
    """Draws the per-layer diagnostics over epochs into ``path`` (PNG), one panel per metric
    of ``LAYER_PANELS`` (mean |s|, nudge per unit, mean |θ|, units at 0 and 1) and one line
    per layer, coloured from the bottom layer (dark) to the top (light). Older records' keys
    stand in, titled with their definitions (``LEGACY_LAYER_PANELS``). Returns False (no
    file) when the history has no per-layer metric."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = []
    for title, keys, log in LAYER_PANELS:
        series = [(_layer_rows(history, k, x_key), style, suffix) for k, style, suffix in keys]
        series = [(s, style, suffix) for s, style, suffix in series if s is not None]
        if not series and keys[0][0] in LEGACY_LAYER_PANELS:
            title, old = LEGACY_LAYER_PANELS[keys[0][0]]
            found = _layer_rows(history, old, x_key)
            series = [(found, "-", "")] if found is not None else []
        if series:
            panels.append((title, series, log))
    if not panels:
        return False
    fig = Figure(figsize=(6 * min(len(panels), 2), 4 * ((len(panels) + 1) // 2)), dpi=100)
    FigureCanvasAgg(fig)
    width = max(values.shape[1] for _, s, _ in panels for (_, values), _, _ in s)
    colors = [colormaps["viridis"](0.9 * l / max(width - 1, 1)) for l in range(width)]
    names = list(layer_names) + [f"layer{l + 1}" for l in range(len(layer_names), width)]
    for i, (title, series, log) in enumerate(panels):
        ax = fig.add_subplot((len(panels) + 1) // 2, min(len(panels), 2), i + 1)
        positive = False
        for (xs, values), style, suffix in series:
            for l in range(values.shape[1]):
                if not np.any(np.isfinite(values[:, l])):
                    continue
                ax.plot(xs, values[:, l], style, marker="o", markersize=2.5, color=colors[l],
                        label=None if suffix else names[l])
                positive |= bool(np.any(values[:, l] > 0))
        if log and positive:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(x_key)
        integer_ticks(ax)
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, ncol=2)
    _save_png(fig, path)
    return True


# --------------------------------------------------------------------------
# MetricsWriter
# --------------------------------------------------------------------------


class MetricsWriter:
    """Per-epoch metric sink (JSONL + TensorBoard + curves.png).

    Existing ``metrics.jsonl`` content is loaded as history on construction
    (so curves cover the whole run after a resume); call
    :meth:`truncate_after` with the restored epoch right after restoring a
    checkpoint to drop records of epochs that will be recomputed.  With
    ``is_primary=False`` every method is a no-op and nothing is created.
    """

    def __init__(self, workdir: str | os.PathLike, *, is_primary: bool = True,
                 layer_names: Sequence[str] = ()):
        self.workdir = os.fspath(workdir)
        self.layer_names = tuple(layer_names)
        self.is_primary = bool(is_primary)
        self.metrics_path = os.path.join(self.workdir, METRICS_FILE)
        self.tensorboard_dir = os.path.join(self.workdir, TENSORBOARD_DIR)
        self.curves_path = os.path.join(self.workdir, CURVES_FILE)
        self.layers_path = os.path.join(self.workdir, LAYERS_FILE)
        self.config_path = os.path.join(self.workdir, CONFIG_FILE)
        self._tb = None
        self._purge_step: int | None = None
        self.history: list[dict] = []
        if self.is_primary:
            os.makedirs(self.workdir, exist_ok=True)
            self.history = read_metrics(self.workdir)

    # -- TensorBoard --------------------------------------------------------

    def _tb_writer(self):
        if self._tb is None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=self.tensorboard_dir, purge_step=self._purge_step)
            self._purge_step = None
        return self._tb

    def _close_tb(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # -- API ----------------------------------------------------------------

    def write(self, epoch_record: Mapping[str, Any]) -> None:
        """Appends one record (JSONL), logs its scalars to TB, redraws curves."""
        if not self.is_primary:
            return
        record = jsonable(dict(epoch_record))
        line = json.dumps(record, allow_nan=False, sort_keys=False)
        needs_newline = False
        if os.path.exists(self.metrics_path) and os.path.getsize(self.metrics_path) > 0:
            with open(self.metrics_path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"  # partial line from a crash
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(("\n" if needs_newline else "") + line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.history.append(record)

        step = _scalar(epoch_record.get("epoch"))
        step = len(self.history) if step is None else int(step)
        tb = self._tb_writer()
        for tag, value in _flatten(epoch_record).items():
            if tag == "epoch":
                continue
            v = _scalar(value)
            if v is not None:
                tb.add_scalar(tag, v, global_step=step)
            elif isinstance(value, (list, tuple, np.ndarray)) and (
                    tag.startswith("layer_") or tag in PER_LAYER_KEYS):
                for l, item in enumerate(value):
                    v = _scalar(item)
                    if v is not None:
                        tb.add_scalar(f"layer/{self._layer_name(l)}/"
                                      f"{tag.removeprefix('layer_')}", v, global_step=step)
        tb.flush()
        plot_curves(self.history, self.curves_path)

    def _layer_name(self, l: int) -> str:
        return self.layer_names[l] if l < len(self.layer_names) else f"layer{l + 1}"

    def write_layers(self) -> str | None:
        """Draws ``layers.png`` (:func:`plot_layers`) from the history; returns its path, or
        None when there is nothing to draw (or on a non-primary process)."""
        if not self.is_primary or not self.history:
            return None
        if plot_layers(self.history, self.layers_path, layer_names=self.layer_names):
            return self.layers_path
        return None

    def truncate_after(self, epoch: int) -> None:
        """Drops records with ``epoch > epoch`` (atomic rewrite of the JSONL).

        Also hides TensorBoard events with step > ``epoch`` (tensorboardX
        ``purge_step``) and redraws the curves.
        """
        if not self.is_primary:
            return
        kept = []
        for rec in read_metrics(self.workdir):
            e = _scalar(rec.get("epoch"))
            if e is None or e <= epoch:
                kept.append(rec)
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        _atomic_write_text(self.metrics_path, text)
        self.history = kept
        self._close_tb()
        self._purge_step = int(epoch) + 1
        if kept:
            plot_curves(self.history, self.curves_path)

    def write_config(self, config_dict: Mapping[str, Any] | Any) -> None:
        """Writes ``config.json`` (sorted keys, indented; atomic)."""
        if not self.is_primary:
            return
        data = jsonable(config_dict)
        _atomic_write_text(self.config_path, json.dumps(data, sort_keys=True, indent=2) + "\n")

    def close(self) -> None:
        if not self.is_primary:
            return
        self._close_tb()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------
# ProgressReporter
# --------------------------------------------------------------------------


def percent(fraction: Any) -> str:
    """An accuracy (a fraction in [0, 1]) as every printed line shows it: ``96.38%``."""
    if fraction is None or not math.isfinite(float(fraction)):
        return "n/a"
    return f"{100.0 * float(fraction):.2f}%"


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


class ProgressReporter:
    """Rate-limited one-line progress reports.

    ``update(step, examples, loss, accuracy, epoch)`` where ``step`` and
    ``examples`` are *cumulative* counts for this run (steps done, examples
    processed), ``epoch`` is 1-based and ``accuracy`` is a fraction in [0, 1].
    The first call only sets the reference point for throughput/ETA (so jit
    compile time does not dominate) and prints a line without rate; later calls
    print at most once every ``every_seconds`` (``force=True`` overrides).
    With ``steps_per_epoch`` the line counts steps within the epoch, of
    ``total_steps / steps_per_epoch`` epochs (the percentage and the ETA are
    the run's), e.g.::

        epoch 3/10 step 40/40 (30.0%) 812.3 ex/s loss 0.4123 acc 88.12% ETA 0:03:10

    (without it: ``epoch 3 step 120/400 ...``, the run's steps).

    ``update`` returns the printed line, or ``None`` if it stayed silent.
    ``clock`` (default ``time.monotonic``) is injectable for tests.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        every_seconds: float = 5.0,
        print_fn: Callable[[str], Any] = print,
        clock: Callable[[], float] = time.monotonic,
        steps_per_epoch: int = 0,
    ):
        self.total_steps = int(total_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.every_seconds = float(every_seconds)
        self.print_fn = print_fn
        self.clock = clock
        self._t0: float | None = None
        self._step0 = 0
        self._examples0 = 0
        self._last_print: float | None = None

    def format_line(self, step: int, examples: int, loss: float, accuracy: float, epoch: int,
                    now: float) -> str:
        total = max(self.total_steps, 1)
        pct = 100.0 * step / total
        elapsed = None if self._t0 is None else now - self._t0
        if elapsed is not None and elapsed > 0 and step > self._step0:
            ex_rate = (examples - self._examples0) / elapsed
            step_rate = (step - self._step0) / elapsed
            rate_s = f"{ex_rate:.1f} ex/s"
            eta_s = _format_eta((self.total_steps - step) / step_rate)
        else:
            rate_s = "-- ex/s"
            eta_s = "--:--:--"
        if self.steps_per_epoch > 0:
            epochs = -(-self.total_steps // self.steps_per_epoch)
            where = (
                f"epoch {epoch}/{epochs} step "
                f"{step - (epoch - 1) * self.steps_per_epoch}/{self.steps_per_epoch}"
            )
        else:
            where = f"epoch {epoch} step {step}/{self.total_steps}"
        return (
            f"{where} ({pct:.1f}%) {rate_s} "
            f"loss {float(loss):.4f} acc {percent(accuracy)} ETA {eta_s}"
        )

    def update(self, step: int, examples: int, loss: Any, accuracy: Any, epoch: int, *,
               force: bool = False) -> str | None:
        # Waits for the values (device arrays) before reading the clock: the time is that of
        # a finished step, not of a dispatched one.
        loss, accuracy = float(loss), float(accuracy)
        now = self.clock()
        if self._t0 is None:
            line = self.format_line(step, examples, loss, accuracy, epoch, now)
            self._t0, self._step0, self._examples0 = now, int(step), int(examples)
        elif force or now - self._last_print >= self.every_seconds:
            line = self.format_line(step, examples, loss, accuracy, epoch, now)
        else:
            return None
        self._last_print = now
        self.print_fn(line)
        return line
