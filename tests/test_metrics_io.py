"""Tests for ep_jax.app.metrics_io."""

import glob
import json
import math
import os
import re

import numpy as np
import pytest

from ep_jax.app.metrics_io import (MetricsWriter, ProgressReporter, percent, plot_curves,
                                   plot_layers, read_metrics)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rec(epoch, **kw):
    r = {
        "epoch": epoch,
        "train_loss": 1.0 / (epoch + 1),
        "test_loss": 1.2 / (epoch + 1),
        "train_accuracy": 0.5 + 0.05 * epoch,
        "test_accuracy": 0.45 + 0.05 * epoch,
    }
    r.update(kw)
    return r


def test_writer_outputs(tmp_path):
    w = MetricsWriter(tmp_path)
    w.write_config({"b": 2, "a": {"z": 1, "y": [1, 2]}})
    for e in range(3):
        w.write(rec(e, lr=np.float32(0.1), extra={"layer0": np.float64(0.5)}))
    w.close()

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["epoch"] == 0 and isinstance(first["lr"], float)
    assert first["extra"] == {"layer0": 0.5}
    assert read_metrics(tmp_path)[2]["epoch"] == 2

    events = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert events and os.path.getsize(events[0]) > 0
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

    cfg_text = (tmp_path / "config.json").read_text()
    assert json.loads(cfg_text) == {"a": {"y": [1, 2], "z": 1}, "b": 2}
    assert cfg_text.index('"a"') < cfg_text.index('"b"') and "\n  " in cfg_text


def test_tensorboard_scalars_readable(tmp_path):
    from tensorboardX.event_file_writer import EventFileWriter  # noqa: F401
    from tensorboardX.proto import event_pb2

    w = MetricsWriter(tmp_path)
    w.write(rec(0))
    w.write(rec(1, test_loss=float("nan")))
    w.close()
    (path,) = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    # minimal TFRecord reader: len(8) crc(4) data crc(4)
    data = open(path, "rb").read()
    tags = set()
    i = 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 8], "little")
        ev = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
        i += 12 + n + 4
        for v in ev.summary.value:
            tags.add((v.tag, ev.step))
    assert ("train_loss", 0) in tags and ("test_accuracy", 1) in tags
    assert not any(t == "epoch" for t, _ in tags)


def _tags(workdir):
    from tensorboardX.proto import event_pb2

    (path,) = glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))
    data = open(path, "rb").read()
    tags, i = {}, 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 8], "little")
        ev = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
        i += 12 + n + 4
        for v in ev.summary.value:
            tags[(v.tag, ev.step)] = v.simple_value
    return tags


def test_tensorboard_gets_one_scalar_per_layer(tmp_path):
    """`layer/<name>/<metric>` for the per-layer lists; other lists (lrs) are not split."""
    w = MetricsWriter(tmp_path, layer_names=("conv1", "dense1"))
    w.write(rec(1, layer_nudge=[0.5, 0.25], kappa=[0.0, 1.0], lrs=[0.1, 0.2],
                layer_zero_frac=[0.1, None], layer_one_frac=[0.0, 0.0, 0.3]))
    w.close()
    tags = _tags(tmp_path)
    assert tags[("layer/conv1/nudge", 1)] == 0.5 and tags[("layer/dense1/nudge", 1)] == 0.25
    assert tags[("layer/dense1/kappa", 1)] == 1.0
    assert ("layer/conv1/zero_frac", 1) in tags and ("layer/dense1/zero_frac", 1) not in tags
    assert ("layer/layer3/one_frac", 1) in tags  # beyond the names: numbered
    assert not any("lrs" in t for t, _ in tags)


def test_layers_figure_and_integer_epoch_ticks(tmp_path):
    """layers.png from new records and from older ones (their keys stand in); none without
    per-layer metrics; curves.png ticks at whole epochs only."""
    new = [rec(e, layer_mean_abs_state=[0.3, 0.1], layer_nudge=[1e-2, 1e-3],
               layer_nudge_output=[5e-3, 1e-3], layer_mean_abs_theta=[0.1, 0.2],
               layer_zero_frac=[0.2, 0.9], layer_one_frac=[0.1, 0.0]) for e in range(1, 9)]
    assert plot_layers(new, tmp_path / "new.png", layer_names=("conv1", "dense1"))
    old = [rec(e, layer_mean_abs_state=[0.3, None], layer_nudge_norm=[0.5, 0.1],
               layer_mean_abs_param=[0.1, 0.2], layer_saturated_frac=[0.4, 1.0])
           for e in range(1, 4)]
    assert plot_layers(old, tmp_path / "old.png")
    assert not plot_layers([rec(1)], tmp_path / "none.png")
    assert (tmp_path / "new.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "old.png").read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "none.png").exists()
    w = MetricsWriter(tmp_path / "run", layer_names=("conv1", "dense1"))
    for r in new:
        w.write(r)
    assert w.write_layers() == str(tmp_path / "run" / "layers.png")
    w.close()
    fig = plot_curves(new[:3], tmp_path / "c.png")  # 3 epochs: matplotlib would tick halves
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [x for x in ax.get_xticks() if lo <= x <= hi]
        assert ticks and all(float(x).is_integer() for x in ticks), ticks


def test_nan_written_as_null(tmp_path):
    w = MetricsWriter(tmp_path)
    w.write(rec(0, train_loss=float("nan"), test_loss=np.float32("inf"), hist=[1.0, float("nan")]))
    w.close()
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert "NaN" not in line and "Infinity" not in line
    parsed = json.loads(line)  # strict JSON parses
    assert parsed["train_loss"] is None and parsed["test_loss"] is None
    assert parsed["hist"] == [1.0, None]
    assert read_metrics(tmp_path)[0]["train_loss"] is None
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_truncate_after_and_resume(tmp_path):
    w = MetricsWriter(tmp_path)
    for e in range(5):
        w.write(rec(e))
    w.close()

    w2 = MetricsWriter(tmp_path)  # resume
    assert [r["epoch"] for r in w2.history] == [0, 1, 2, 3, 4]
    w2.truncate_after(2)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    w2.write(rec(3, note="rerun"))
    w2.close()
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["note"] == "rerun"
    assert [r["epoch"] for r in w2.history] == [0, 1, 2, 3]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_partial_trailing_line_is_tolerated(tmp_path):
    w = MetricsWriter(tmp_path)
    w.write(rec(0))
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "train_lo')  # crash mid-write
    with pytest.warns(UserWarning, match="malformed"):
        w = MetricsWriter(tmp_path)
    w.write(rec(1))
    w.close()
    with pytest.warns(UserWarning):
        assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1]


def test_not_primary_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    w = MetricsWriter(workdir, is_primary=False)
    w.write_config({"a": 1})
    w.write(rec(0))
    w.truncate_after(0)
    w.close()
    assert not workdir.exists()
    assert read_metrics(workdir) == []


def test_plot_curves_standalone(tmp_path):
    history = [
        {"epoch": 1, "train": {"loss": 0.9, "accuracy": 0.6}, "test": {"loss": 1.0}},
        {"epoch": 2, "train": {"loss": 0.7, "accuracy": 0.7}, "test": {"loss": None}},
    ]
    out = tmp_path / "sub" / "c.png"
    plot_curves(history, out)
    assert out.read_bytes().startswith(PNG_MAGIC)
    plot_curves([], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").exists()


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


LINE_RE = re.compile(
    r"^epoch \d+ step \d+/\d+ \(\d+\.\d%\) (\d+\.\d|--) ex/s loss -?\d+\.\d{4} "
    r"acc \d+\.\d{2}% ETA (\d+:\d\d:\d\d|--:--:--)$"
)


def test_progress_reporter_format_and_eta():
    clock = FakeClock()
    lines = []
    p = ProgressReporter(400, every_seconds=5.0, print_fn=lines.append, clock=clock)

    # first call (includes compile time): prints, no rate yet
    out = p.update(step=1, examples=32, loss=2.3, accuracy=0.1, epoch=0)
    assert out == lines[-1] and LINE_RE.match(out), out
    assert "-- ex/s" in out and "ETA --:--:--" in out

    clock.t += 2.0
    assert p.update(step=5, examples=160, loss=1.0, accuracy=0.5, epoch=0) is None  # rate limited

    clock.t = 100.0 + 119.0 * 0.25  # 119 steps since the first call in 29.75 s -> 4 steps/s
    out = p.update(step=120, examples=120 * 32, loss=0.41234, accuracy=0.88123, epoch=3)
    assert LINE_RE.match(out), out
    ex_rate = (120 * 32 - 32) / 29.75
    assert f"{ex_rate:.1f} ex/s" in out
    assert out.startswith("epoch 3 step 120/400 (30.0%)")
    assert "loss 0.4123 acc 88.12%" in out
    # remaining 280 steps at 4 steps/s = 70 s
    assert out.endswith("ETA 0:01:10")
    assert len(lines) == 2

    # within every_seconds -> silent; force overrides
    clock.t += 1.0
    assert p.update(121, 121 * 32, 0.4, 0.88, 3) is None
    assert p.update(121, 121 * 32, 0.4, 0.88, 3, force=True) is not None
    clock.t += 5.0
    assert p.update(122, 122 * 32, 0.4, 0.88, 3) is not None
    assert len(lines) == 4


def test_progress_reporter_excludes_first_call_compile_time():
    clock = FakeClock(0.0)
    lines = []
    p = ProgressReporter(1000, every_seconds=0.0, print_fn=lines.append, clock=clock)
    clock.t = 50.0  # first call arrives after a 50 s compile
    p.update(1, 100, 1.0, 0.0, 0)
    clock.t = 60.0  # 100 steps / 10000 examples in 10 s since the first call
    out = p.update(101, 100 * 101, 1.0, 0.0, 0)
    assert "1000.0 ex/s" in out
    assert out.endswith("ETA 0:01:30")  # 899 steps / 10 per s = 89.9 s -> 90
    assert not math.isnan(float(out.split()[5]))


class _Pending:
    """A device value not computed yet: reading it waits `seconds` on the fake clock."""

    def __init__(self, clock, seconds, value=1.0):
        self.clock, self.seconds, self.value = clock, seconds, value

    def __float__(self):
        self.clock.t += self.seconds
        return self.value


def test_progress_reporter_times_finished_steps_not_dispatched_ones():
    """The clock is read after the step's values are there: the first step (50 s with its
    compilation) is not counted, the second (10 s) is."""
    clock = FakeClock(0.0)
    lines = []
    p = ProgressReporter(3, every_seconds=0.0, print_fn=lines.append, clock=clock)
    p.update(1, 10, _Pending(clock, 50.0), 0.5, 1)  # compile + first step: t0 after it
    out = p.update(2, 20, _Pending(clock, 10.0), 0.5, 1)
    assert "1.0 ex/s" in out and out.endswith("ETA 0:00:10"), out


def test_progress_reporter_counts_steps_within_the_epoch():
    clock = FakeClock(0.0)
    lines = []
    p = ProgressReporter(400, every_seconds=0.0, print_fn=lines.append, clock=clock,
                         steps_per_epoch=40)
    out = p.update(step=120, examples=120 * 32, loss=0.5, accuracy=0.9638, epoch=3)
    assert out.startswith("epoch 3/10 step 40/40 (30.0%) ") and "acc 96.38%" in out, out
    assert p.update(121, 121 * 32, 0.5, 0.5, 4).startswith("epoch 4/10 step 1/40 ")


def test_percent_is_the_one_accuracy_format():
    assert percent(0.9638) == "96.38%" and percent(1) == "100.00%"
    assert percent(None) == "n/a" and percent(float("nan")) == "n/a"
