"""Data parallelism over fake CPU devices (conftest sets 4) equals one device."""

import jax
import numpy as np
import pytest

from ep_jax.app import build, train
from test_train import tiny_config


@pytest.mark.slow
def test_four_devices_equal_one_device(tmp_path):
  assert jax.device_count() >= 4
  results = {}
  for n in (1, 4):
    config = tiny_config(train__num_devices=n, train__epochs=2)
    lines = []
    record = train.train_and_evaluate(config, str(tmp_path / str(n)), print_fn=lines.append)
    assert f'{n} device(s)' in lines[0]
    results[n] = record
  for key in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'grad_norm'):
    np.testing.assert_allclose(results[4][key], results[1][key], rtol=2e-5, atol=1e-6,
                               err_msg=key)
  np.testing.assert_allclose(results[4]['layer_mean_abs_theta'],
                             results[1]['layer_mean_abs_theta'], rtol=1e-5)


def test_batch_not_divisible_by_devices(tmp_path):
  with pytest.raises(ValueError, match='not divisible by the 4 devices'):
    train.train_and_evaluate(tiny_config(train__batch_size=34, train__num_devices=4),
                             str(tmp_path))
  with pytest.raises(ValueError, match='devices are visible'):
    train.train_and_evaluate(tiny_config(train__num_devices=64), str(tmp_path))


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_localhost(tmp_path):
  """Multi-host code path for real: 2 processes x 1 CPU device, gloo collectives.

  Each process reads its own shard of the train and test data; process 0 alone writes the
  metrics; the test accuracy of the sharded evaluation equals a single-process evaluation of
  the saved parameters (every test example counted once).
  """
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from test_train import REPO, TINY  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  env.pop('XLA_FLAGS', None)  # one device per process
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'experiments.train', *TINY, '--config.train.epochs=2',
       '--config.train.multihost=True', f'--config.train.coordinator_address=localhost:{port}',
       '--config.train.num_processes=2', f'--config.train.process_id={i}',
       f'--workdir={workdir}'], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=400)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert '2 device(s)' in outs[0] and 'final test_accuracy=' in outs[0]
  assert 'final test_accuracy=' not in outs[1]  # only process 0 reports and writes
  records = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['epoch'] for r in records] == [1, 2]

  # Single-process evaluation of the saved parameters on the whole test split.
  from ep_jax.app import data  # pylint: disable=g-import-not-at-top
  from ep_jax.app.checkpointing import Checkpointer  # pylint: disable=g-import-not-at-top
  from ep_jax.train_step import make_eval_step  # pylint: disable=g-import-not-at-top
  config = tiny_config(train__epochs=2)
  _, test_split, info = build.load_data(config)
  spec = build.build_spec(config, info)
  setup = train.build_run(config, spec, 8)
  with Checkpointer(os.path.join(workdir, 'checkpoints')) as ckpt:
    state, _ = ckpt.restore(setup.state, step=2)  # after epoch 2, the last record
  eval_step = jax.jit(make_eval_step(spec, build.build_ep_config(config)))
  correct = count = 0.0
  for batch in data.eval_batches(test_split, info, batch_size=64, prefetch=0):
    out = eval_step(state.params, batch)
    correct, count = correct + float(out['correct']), count + float(out['count'])
  assert count == 100
  np.testing.assert_allclose(correct / count, records[-1]['test_accuracy'], atol=1e-6)
