"""End to end: train_and_evaluate into a temp workdir, resume after SIGKILL, error paths."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from ep_jax.app import build, train
from ep_jax.app.checkpointing import CheckpointError
from ep_jax.app.metrics_io import read_metrics
from experiments import cli
from experiments.configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.data.train_subset=256', '--config.data.test_subset=100',
        '--config.model.layout=8,M', '--config.ep.free_steps=10', '--config.ep.nudged_steps=4',
        '--config.train.batch_size=32', '--config.optim.learning_rates=(0.1,)', '--config.train.eval_batch_size=64']


def tiny_config(**overrides):
  config = default.get_config()
  config.data.train_subset = 256
  config.data.test_subset = 100  # not a multiple of the eval batch: padding is exercised
  config.model.layout = '8,M'
  config.optim.learning_rates = (0.1,)
  config.ep.free_steps = 10
  config.ep.nudged_steps = 4
  config.train.epochs = 1
  config.train.batch_size = 32
  config.train.eval_batch_size = 64
  for key, value in overrides.items():
    section, field = key.split('__')
    config[section][field] = value
  return config


@pytest.mark.slow
def test_one_epoch_writes_every_output(tmp_path):
  lines = []
  record = train.train_and_evaluate(tiny_config(), str(tmp_path), print_fn=lines.append)
  assert lines[-1] == f'final test_accuracy={record["test_accuracy"]}'
  assert lines[-2] == (f'curves: {tmp_path}/curves.png; per-layer diagnostics: '
                       f'{tmp_path}/layers.png; to overlay runs: python -m experiments.plots '
                       f'--workdir={tmp_path} --workdir=OTHER_RUN')
  assert (tmp_path / 'layers.png').stat().st_size > 1000
  assert json.load(open(tmp_path / 'config.json'))['model']['layout'] == '8,M'
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert len(records) == 1
  for key in ('epoch', 'step', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
              'free_steps_mean', 'lr', 'epoch_time_s', 'examples_per_s',
              'layer_mean_abs_state', 'layer_zero_frac', 'layer_nudge',
              'layer_nudged_residual', 'layer_mean_abs_theta'):
    assert key in records[0], key
  assert records[0]['step'] == 256 // 32
  # 100 test examples in batches of 64: the 28 padding examples of the last batch are not
  # counted, so the accuracy is a whole number of hundredths (k/128 if they were).
  accuracy = records[0]['test_accuracy']
  assert abs(accuracy * 100 - round(accuracy * 100)) < 1e-6, accuracy
  assert glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
  assert (tmp_path / 'curves.png').stat().st_size > 1000
  assert os.listdir(tmp_path / 'checkpoints') == ['1']  # named by the epochs it completes
  compiling = [i for i, l in enumerate(lines) if 'compiling the train step' in l]
  first_step = [i for i, l in enumerate(lines) if l.startswith('epoch 1/1 step 1/8 ')]
  assert compiling and first_step and compiling[0] < first_step[0]  # lines during epoch 1


def _cli(workdir, *extra):
  return [sys.executable, '-m', 'experiments.train', f'--workdir={workdir}', *TINY,
          '--config.train.epochs=3', *extra]


def _env():
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  done = subprocess.run(_cli(straight), cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  proc = subprocess.Popen(_cli(killed), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not os.path.isdir(killed / 'checkpoints' / '1') and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.isdir(killed / 'checkpoints' / '1')
  resumed = subprocess.run(_cli(killed), cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from' in resumed.stdout
  a = [json.loads(l) for l in open(straight / 'metrics.jsonl')]
  b = [json.loads(l) for l in open(killed / 'metrics.jsonl')]
  assert [r['epoch'] for r in b] == [1, 2, 3]
  for ra, rb in zip(a, b):
    for key in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'step'):
      assert ra[key] == rb[key], (key, ra[key], rb[key])
  assert resumed.stdout.strip().splitlines()[-1] == done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_cli_unknown_field_and_dataset_errors(tmp_path):
  bad_field = subprocess.run(_cli(tmp_path / 'a', '--config.model.nonexistent=3'), cwd=REPO,
                             env=_env(), capture_output=True, text=True, timeout=120)
  assert bad_field.returncode != 0 and 'nonexistent' in bad_field.stderr
  with pytest.raises(ValueError, match='unknown dataset'):
    train.train_and_evaluate(tiny_config(data__dataset='imagenet21k'), str(tmp_path / 'b'))


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(PermissionError, match='not writable'):
    train.train_and_evaluate(tiny_config(), str(blocker / 'run'))


def test_bad_preset_and_batch_divisibility(tmp_path):
  with pytest.raises(ValueError, match='malformed layout'):
    train.train_and_evaluate(tiny_config(model__layout='vgg99'), str(tmp_path / 'a'))
  with pytest.raises(ValueError, match='not divisible'):
    train.train_and_evaluate(tiny_config(train__batch_size=30), str(tmp_path / 'b'))


def _adopt(workdir, config):
  """Makes `config` the saved config of the run in `workdir`, so that resuming with it is
  allowed: a run whose later epochs go wrong."""
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config.to_dict(), f)


@pytest.mark.slow
def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
  train.train_and_evaluate(tiny_config(), str(tmp_path))
  before = sorted(os.listdir(tmp_path / 'checkpoints'))
  config = tiny_config(train__epochs=2)
  config.optim.learning_rates = (1e38,)
  _adopt(tmp_path, config)
  expected = r'epoch 2/2, step \d/8:.*non-finite parameters: \[.*conv1.*last good checkpoint'
  with pytest.raises(train.NonFiniteError, match=expected):
    train.train_and_evaluate(config, str(tmp_path), print_fn=lambda _: None)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before
  assert len(open(tmp_path / 'metrics.jsonl').readlines()) == 1


@pytest.mark.slow
def test_non_converging_relaxation_stops_and_keeps_last_good_checkpoint(tmp_path):
  two = dict(model__layout='6,M,6,M')  # two layers: feedback, so 2 steps do not settle
  train.train_and_evaluate(tiny_config(**two), str(tmp_path), print_fn=lambda _: None)
  before = sorted(os.listdir(tmp_path / 'checkpoints'))
  # A finite relaxation that has not settled: 2 free steps cannot reach a 1e-9 residual.
  config = tiny_config(train__epochs=2, ep__free_steps=2, ep__max_residual=1e-9, **two)
  _adopt(tmp_path, config)
  expected = (r'did not converge at epoch 2: mean final residual .* > ep.max_residual=1e-09 '
              r'after 2 steps .*layers above the limit: conv\d .*last good checkpoint is kept')
  with pytest.raises(train.NonConvergenceError, match=expected):
    train.train_and_evaluate(config, str(tmp_path), print_fn=lambda _: None)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before
  assert len(open(tmp_path / 'metrics.jsonl').readlines()) == 1
  # Off (0) it trains on; the record has the per-layer residuals.
  config = tiny_config(train__epochs=2, ep__free_steps=2, ep__max_residual=0.0, **two)
  _adopt(tmp_path, config)
  record = train.train_and_evaluate(config, str(tmp_path), print_fn=lambda _: None)
  assert record['epoch'] == 2 and len(record['layer_free_residual']) == 2


@pytest.mark.slow
def test_corrupt_checkpoint_is_reported_not_overwritten(tmp_path):
  config = tiny_config(train__epochs=2)
  train.train_and_evaluate(config, str(tmp_path), print_fn=lambda _: None)
  step_dir = tmp_path / 'checkpoints' / '2'
  for path in glob.glob(str(step_dir / 'state' / '**' / '*'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'wb') as f:
        f.write(b'garbage')
  snapshot = _snapshot(tmp_path)
  with pytest.raises(CheckpointError, match='checkpoints/2'):
    train.train_and_evaluate(config, str(tmp_path), print_fn=lambda _: None)
  assert _snapshot(tmp_path) == snapshot  # nothing in the workdir was written
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']
  # The command line says it in a few lines.
  cli = _run_cli(tmp_path, *TINY, '--config.train.epochs=2')
  assert cli.returncode == 1 and 'checkpoints/2' in cli.stderr and 'corrupt' in cli.stderr
  assert len(cli.stderr.strip().splitlines()) <= 5 and 'Traceback' not in cli.stderr
  assert _snapshot(tmp_path) == snapshot


def _snapshot(workdir):
  """Every file under `workdir` with its bytes and modification time."""
  return {p: (open(p, 'rb').read(), os.stat(p).st_mtime_ns)
          for p in glob.glob(str(workdir / '**' / '*'), recursive=True) if os.path.isfile(p)}


def _run_cli(workdir, *flags, script='experiments.train', env=None):
  return subprocess.run([sys.executable, '-m', script, f'--workdir={workdir}', *flags],
                        cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_resume_with_another_config_is_refused_before_anything_is_written(tmp_path):
  lines = []
  first = train.train_and_evaluate(tiny_config(), str(tmp_path), print_fn=lines.append)
  snapshot = _snapshot(tmp_path)
  changed = tiny_config(train__epochs=2, model__layout='6,M')
  expected = (r"another config: model.layout \('8,M' -> '6,M'\), train.epochs \(1 -> 2\).*"
              r'not extended.*checkpoints are kept')
  with pytest.raises(ValueError, match=expected) as e:
    train.train_and_evaluate(changed, str(tmp_path), print_fn=lines.append)
  assert 'delete' not in str(e.value)
  assert _snapshot(tmp_path) == snapshot
  # Fields that do not change the computation may differ; a finished run is not trained on.
  again = train.train_and_evaluate(tiny_config(train__log_every_seconds=1.0), str(tmp_path),
                                   print_fn=lines.append)
  assert again == first and any('the run is complete' in l for l in lines)
  assert os.listdir(tmp_path / 'checkpoints') == ['1']


BAD_INPUTS = {
    'unknown_field': ['--config.train.epochz=3'],
    'missing_config_file': ['--config=no/such/config.py'],
    'missing_config_file_with_override': ['--config=no/such/config.py', '--config.seed=1'],
    'zero_epochs': ['--config.train.epochs=0'],
    'negative_epochs': ['--config.train.epochs=-1'],
    'learning_rate_count': ['--config.optim.learning_rates=(0.1,0.2,0.3,0.4,0.5)'],
    'missing_teacher': ['--config.signals.kd.enabled=True',
                        '--config.signals.kd.teacher_workdir=/nonexistent/teacher'],
    'unknown_dataset': ['--config.data.dataset=imagenet21k'],
    'bad_value': ['--config.train.epochs=many'],
    'stray_argument': ['stray'],
}


@pytest.mark.slow
def test_cli_bad_inputs_end_with_a_short_message_and_no_workdir(tmp_path):
  for name, flags in BAD_INPUTS.items():
    workdir = tmp_path / name
    start = time.time()
    done = _run_cli(workdir, *flags)
    assert done.returncode in (1, 2), (name, done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 5 and lines[0].startswith('error: '), (name, done.stderr)
    assert 'Traceback' not in done.stderr, name
    assert not workdir.exists(), name
    assert time.time() - start < 30, name  # found before data loading and compilation
  verbose = _run_cli(tmp_path / 'v', '--config.train.epochs=0',
                     env=dict(_env(), EP_JAX_TRACEBACK='1'))
  assert verbose.returncode != 0 and 'Traceback' in verbose.stderr
  other = _run_cli(tmp_path / 't', '--config.teacher.epochs=0', script='experiments.train_teacher')
  assert other.returncode == 1 and other.stderr.startswith('error: teacher.epochs must be >= 1')


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume(tmp_path):
  proc = subprocess.Popen(_cli(tmp_path, '--config.train.epochs=200'), cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not os.path.isdir(tmp_path / 'checkpoints' / '1') and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  lines = err.strip().splitlines()
  assert 'Traceback' not in err and len(lines) == 2, err
  # Ctrl-C is acted on between steps, never inside a checkpoint's write.
  assert lines[0] == 'stopping after the current step (Ctrl-C again stops at once)'
  match = re.fullmatch(r'interrupted at epoch (\d+)/200; to resume (?:from epoch (\d+)|'
                       r'epoch (\d+) after its step (\d+)/8) run: (.*)', lines[1])
  assert match, err
  assert match.group(5).startswith('python -m experiments.train --workdir=')
  done = max(int(n) for n in os.listdir(tmp_path / 'checkpoints') if n.isdigit())
  assert int(match.group(2) or match.group(3)) == done + 1
  assert int(match.group(1)) in (done, done + 1)
  if match.group(4):  # Ctrl-C during an epoch saved its finished steps
    assert os.listdir(tmp_path / train.MID_EPOCH_DIR) == [str(done * 8 + int(match.group(4)))]


def test_check_config_fails_before_the_workdir_is_made(tmp_path):
  cases = {'train.epochs must be >= 1': dict(train__epochs=0),
           'train.batch_size must be >= 1': dict(train__batch_size=-4),
           r'optim.learning_rates has 2 entries but the network has 2': None,
           'unknown dataset': dict(data__dataset='imagenet21k'),
           'unknown optim.optimizer': dict(optim__optimizer='lamb'),
           'needs 64-bit JAX': dict(ep__dtype='float64'),
           'no teacher in': dict(signals__enabled=None)}
  for expected, overrides in cases.items():
    if overrides is None:
      config = tiny_config()
      config.optim.learning_rates = (0.1, 0.1, 0.1)
      expected = r'optim.learning_rates has 3 entries but the network has 2'
    elif 'signals__enabled' in overrides:
      config = tiny_config()
      config.signals.kd.enabled = True
      config.signals.kd.teacher_workdir = str(tmp_path / 'no_teacher')
    else:
      config = tiny_config(**overrides)
    with pytest.raises((ValueError, FileNotFoundError), match=expected):
      train.train_and_evaluate(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists(), expected


def test_kd_without_a_teacher_workdir_is_refused_unless_the_run_trains_its_teacher(tmp_path):
  config = tiny_config()
  config.signals.kd.enabled = True
  with pytest.raises(ValueError, match='teacher_workdir .* or signals.kd.train_teacher=True'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_train_teacher_trains_the_twin_into_the_workdir_once(tmp_path):
  config = tiny_config()
  config.signals.kd.enabled = True
  config.signals.kd.train_teacher = True
  config.teacher.epochs = 1
  lines = []
  record = train.train_and_evaluate(config, str(tmp_path), print_fn=lines.append)
  meta = json.load(open(tmp_path / train.TEACHER_DIR / 'teacher.json'))
  assert meta['epochs'] == 1 and meta['spec']['layout'] == '8,M'
  assert any(l.startswith('[teacher] training the BP twin') for l in lines)
  assert 'kd_loss' in record  # the EP run distilled from it
  # The saved config is the one given (so the same command resumes), and a resumed or
  # repeated run reuses the teacher.
  assert json.load(open(tmp_path / 'config.json'))['signals']['kd']['teacher_workdir'] == ''
  mtime = os.path.getmtime(tmp_path / train.TEACHER_DIR / 'teacher.json')
  lines = []
  train.train_and_evaluate(config, str(tmp_path), print_fn=lines.append)
  assert os.path.getmtime(tmp_path / train.TEACHER_DIR / 'teacher.json') == mtime
  assert not any('training the BP twin' in l for l in lines)


def test_data_statistics_and_crop_mode_come_from_the_config():
  """`data.mean` / `data.std` replace the dataset's statistics in what `load_data` returns (the
  EP, sweep and teacher paths all load through it); `data.crop_mode` reaches the batches."""
  _, _, own = build.load_data(tiny_config())
  _, _, unit = build.load_data(tiny_config(data__mean=(0.0,), data__std=(1.0,)))
  assert own.mean != (0.0,) and (unit.mean, unit.std) == ((0.0,), (1.0,))
  _, _, scaled = build.load_data(tiny_config(data__std=(0.9,)))
  assert scaled.mean == own.mean and scaled.std == (0.9,)
  with pytest.raises(ValueError, match=r"std has 3 values .* 1 channels"):
    build.load_data(tiny_config(data__std=(0.3, 0.3, 0.3)))
  assert build.augmentation(tiny_config(data__crop_mode='edge'))['crop_mode'] == 'edge'


class _StopAt:
  """A print_fn that raises `exc` at the first progress line of `step` of `epoch`."""

  def __init__(self, epoch, step, exc):
    self.epoch, self.step, self.exc, self.lines = epoch, step, exc, []

  def __call__(self, line):
    self.lines.append(line)
    if re.match(rf'epoch {self.epoch}/\d+ step {self.step}/', line):
      raise self.exc


@pytest.mark.slow
def test_mid_epoch_checkpoints_resume_exactly_mid_epoch(tmp_path):
  # 8 steps an epoch, augmentation on: the resumed run must see the same batches.
  config = tiny_config(train__epochs=2, train__log_every_seconds=0.0, data__augment=True)
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'), print_fn=lambda _: None)
  # Ctrl-C at step 13 (epoch 2, step 5): the lines of step k are printed after step k + 1, so
  # the checkpoint it writes holds 6 steps of epoch 2.
  ctrl_c = tmp_path / 'ctrl_c'
  with pytest.raises(train.Interrupted, match='resume epoch 2 after its step 6/8'):
    train.train_and_evaluate(config, str(ctrl_c), print_fn=_StopAt(2, 5, KeyboardInterrupt()))
  assert os.listdir(ctrl_c / train.MID_EPOCH_DIR) == ['14']
  # A checkpoint whenever a step ends 0 s after the last one: one for each step of the epoch.
  timed = tmp_path / 'timed'
  with pytest.raises(RuntimeError, match='crash'):
    train.train_and_evaluate(tiny_config(train__log_every_seconds=0.0,
                                         train__checkpoint_every_seconds=1e-9),
                             str(timed), print_fn=_StopAt(1, 5, RuntimeError('crash')))
  assert os.listdir(timed / train.MID_EPOCH_DIR) == ['6']  # the latest only, after step 6
  # A crash (no Ctrl-C handler) at epoch 2, step 4 with a checkpoint every 3 steps: resumes
  # after step 3.
  crash = tmp_path / 'crash'
  with pytest.raises(RuntimeError, match='crash'):
    train.train_and_evaluate(tiny_config(train__epochs=2, train__log_every_seconds=0.0,
                                         data__augment=True, train__checkpoint_every_steps=3,
                                         train__checkpoint_every_seconds=0.0),
                             str(crash), print_fn=_StopAt(2, 4, RuntimeError('crash')))
  assert os.listdir(crash / train.MID_EPOCH_DIR) == ['11']  # epoch 2, step 3
  for workdir, steps in ((ctrl_c, 6), (crash, 3)):
    lines = []
    record = train.train_and_evaluate(config, str(workdir), print_fn=lines.append)
    assert f'after step {steps}/8 of epoch 2' in lines[0], lines[0]
    assert not os.path.exists(workdir / train.MID_EPOCH_DIR)  # superseded by checkpoints/2
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['1', '2']
    assert record['step'] == straight['step'] == 16
    for key in ('test_loss', 'test_accuracy'):
      assert record[key] == straight[key], (workdir, key)
    for key in ('train_loss', 'train_accuracy'):  # epoch means over all 8 steps
      assert record[key] == pytest.approx(straight[key], rel=1e-9), (workdir, key)


def _fake_run(runs, name, config, epochs_done):
  """A run folder under `runs` with `config` saved and checkpoints of `epochs_done` epochs."""
  path = runs / name
  (path / 'checkpoints').mkdir(parents=True)
  for epoch in range(1, epochs_done + 1):
    (path / 'checkpoints' / str(epoch)).mkdir()
  _adopt(path, config)
  return str(path)


def test_default_workdir_is_the_latest_unfinished_run_of_the_config(tmp_path):
  from experiments import train as script
  runs = tmp_path / 'runs'
  config = tiny_config(train__epochs=3)
  path = os.path.join(cli.CONFIG_DIR, 'quickstart.py')
  workdir, resuming = script.default_workdir(config, path, str(runs))
  assert not resuming and re.fullmatch(r'\d{8}-\d{6}-quickstart', os.path.basename(workdir))
  older = _fake_run(runs, '20260101-000000-quickstart', config, 1)
  _fake_run(runs, '20260102-000000-quickstart', config, 3)  # finished
  _fake_run(runs, '20260103-000000-quickstart', tiny_config(train__epochs=4), 1)  # other config
  _fake_run(runs, '20260104-000000-mnist', config, 1)  # another config file
  # Fields that do not change the computation may differ.
  assert script.default_workdir(tiny_config(train__epochs=3, train__log_every_seconds=1.0),
                                path, str(runs)) == (older, True)
  newer = _fake_run(runs, '20260105-000000-quickstart', config, 0)  # Ctrl-C in epoch 1
  assert script.default_workdir(config, path, str(runs)) == (newer, True)
  assert not script.default_workdir(tiny_config(train__epochs=5), path, str(runs))[1]


def test_command_line_adds_the_workdir_it_lacks():
  line = cli.command_line('python -m experiments.train',
                          ['--config.optim.learning_rates=(0.1,)'], workdir='runs/a b')
  assert line == ("python -m experiments.train '--config.optim.learning_rates=(0.1,)' "
                  "'--workdir=runs/a b'")
  for given in (['--workdir=x'], ['--workdir', 'x']):
    assert cli.command_line('ep-jax-train', given, workdir='y') == 'ep-jax-train ' + ' '.join(
        given)


# One way of starting the train command, its training replaced by printing the resume command.
_START = '''import runpy, sys
from ep_jax.app import train
train.train_and_evaluate = lambda config, workdir, resume_command: print(resume_command)
sys.argv = ['prog', '--config.train.epochs=2', '--workdir=w']
{start}
'''


@pytest.mark.parametrize('start, program', [
    ("runpy.run_module('experiments.train', run_name='__main__')", 'python -m experiments.train'),
    ("runpy.run_module('ep_jax.app.train_main', run_name='__main__')",
     'python -m ep_jax.app.train_main'),
    ('from ep_jax.app.train_main import run; run()', 'ep-jax-train'),  # the console script
])
def test_the_resume_command_starts_as_the_command_was_started(tmp_path, start, program):
  done = subprocess.run([sys.executable, '-c', _START.format(start=start)], cwd=tmp_path,
                        env=_env(), capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == f'{program} --config.train.epochs=2 --workdir=w'


@pytest.mark.slow
def test_ctrl_c_on_the_default_command_prints_a_command_that_resumes_it(tmp_path):
  """The command with no --workdir (the quick start, shortened) under Ctrl-C, then the printed
  command as given: the same metrics as an uninterrupted run."""
  flags = [*TINY, '--config.train.epochs=30']  # epochs of ~0.1 s: Ctrl-C lands before the end
  straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
  straight.mkdir()
  stopped.mkdir()
  command = [sys.executable, '-m', 'experiments.train', *flags]
  done = subprocess.run(command, cwd=straight, env=_env(), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.startswith('new run in runs/')
  proc = subprocess.Popen(command, cwd=stopped, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not glob.glob(str(stopped / 'runs' / '*' / 'checkpoints' / '1')) and (
      time.time() < deadline):
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  advice = err.strip().splitlines()[-1]
  assert ' run: python -m experiments.train ' in advice, err
  resume = advice.split(' run: ', 1)[1]
  workdir = glob.glob(str(stopped / 'runs' / '*'))
  assert len(workdir) == 1 and resume.endswith(
      f' --workdir=runs/{os.path.basename(workdir[0])}'), (resume, workdir)
  # `python` on PATH is this interpreter: the printed line runs as it is.
  env = dict(_env(), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
  resumed = subprocess.run(resume, shell=True, cwd=stopped, env=env, capture_output=True,
                           text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from' in resumed.stdout
  assert resumed.stdout.strip().splitlines()[-1] == done.stdout.strip().splitlines()[-1]
  a, b = (read_metrics(glob.glob(str(d / 'runs' / '*'))[0]) for d in (straight, stopped))
  assert [r['epoch'] for r in b] == list(range(1, 31))
  for ra, rb in zip(a, b):
    for key in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'step'):
      assert ra[key] == pytest.approx(rb[key], rel=1e-9), (key, ra[key], rb[key])


@pytest.mark.slow
def test_a_refused_resume_resumes_with_the_config_it_advises(tmp_path):
  config = tiny_config(train__epochs=2, train__log_every_seconds=0.0)
  with pytest.raises(train.Interrupted):
    train.train_and_evaluate(config, str(tmp_path), print_fn=_StopAt(2, 2, KeyboardInterrupt()))
  refused = _run_cli(tmp_path, '--config.train.epochs=2')  # the quick start's own layout
  assert refused.returncode == 1, refused.stderr
  advice = re.search(r'the same flags, or (--config=\S+) (--workdir=\S+);', refused.stderr)
  assert advice, refused.stderr
  resumed = subprocess.run([sys.executable, '-m', 'experiments.train', *advice.groups()],
                           cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'after step 3/8 of epoch 2' in resumed.stdout
  assert read_metrics(str(tmp_path))[-1]['epoch'] == 2


def test_a_saved_config_json_loads_with_the_default_schema(tmp_path):
  config = tiny_config(model__skips=((1, 3),), optim__weight_decay=(1e-4, 2e-4))
  _adopt(tmp_path, config)
  loaded = cli.config_from_json(str(tmp_path / 'config.json'))
  assert loaded.to_dict() == config.to_dict() and loaded.model.skips == ((1, 3),)
  assert not train.config_differences(json.load(open(tmp_path / 'config.json')),
                                      loaded.to_dict())
  (tmp_path / 'bad.json').write_text('{"model": {"layers": 3}}')
  with pytest.raises(ValueError, match='unknown config field model.layers'):
    cli.config_from_json(str(tmp_path / 'bad.json'))


@pytest.mark.slow
def test_a_missing_config_file_is_named_on_every_path(tmp_path):
  cases = [('experiments.train', ['--config=no/such.py']),
           ('experiments.train', ['--config=no/such.py', '--config.train.epochs=2']),
           ('experiments.train', ['--config=no/such.json', '--config.train.epochs=2']),
           ('experiments.train', ['--config=no/such.py:arg']),
           ('experiments.train_teacher', ['--config=no/such.py', '--config.teacher.epochs=1']),
           ('experiments.sweep', ['--config=no/such.py'])]
  for script, flags in cases:
    done = _run_cli(tmp_path / 'w', *flags, script=script)
    name = flags[0].split('=', 1)[1].split(':')[0]
    assert done.returncode == 1 and done.stderr.startswith(
        f"error: config file '{name}' not found ({cli.CONFIGS_HINT})\n"), (
            script, flags, done.stderr)
    assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_warm_starts_resume_exactly_mid_epoch_and_shorten_the_free_phase(tmp_path):
  """`ep.warm_start`: the per-example store is part of the checkpointed state (a run
  interrupted mid-epoch ends exactly as an uninterrupted one) and, from the second epoch on,
  the free phase starts near its fixed point."""
  kw = dict(train__epochs=2, train__log_every_seconds=0.0, model__layout='8,8,M,8',
            ep__tol=1e-6, ep__free_steps=100, ep__mode='async')
  config = tiny_config(ep__warm_start=True, **kw)
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'), print_fn=lambda _: None)
  cold = train.train_and_evaluate(tiny_config(**kw), str(tmp_path / 'cold'),
                                  print_fn=lambda _: None)
  history = [json.loads(l) for l in open(tmp_path / 'straight' / 'metrics.jsonl')]
  cold_history = [json.loads(l) for l in open(tmp_path / 'cold' / 'metrics.jsonl')]
  assert history[0]['free_steps_mean'] == cold_history[0]['free_steps_mean']
  assert history[1]['free_steps_mean'] < cold_history[1]['free_steps_mean']
  del cold
  ctrl_c = tmp_path / 'ctrl_c'
  with pytest.raises(train.Interrupted, match='resume epoch 2 after its step 6/8'):
    train.train_and_evaluate(config, str(ctrl_c), print_fn=_StopAt(2, 5, KeyboardInterrupt()))
  record = train.train_and_evaluate(config, str(ctrl_c), print_fn=lambda _: None)
  for key in ('test_loss', 'test_accuracy'):
    assert record[key] == straight[key], key
  assert record['train_loss'] == pytest.approx(straight['train_loss'], rel=1e-9)
