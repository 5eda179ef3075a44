"""The accelerator run (experiments/accelerator): its data packing, its plan of configurations
and stage sizes, the limits of what comes back, and the whole device script at tiny sizes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.accelerator import pack, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shards(folder, sizes=(40, 30, 50)):
  rng = np.random.default_rng(1)
  for shard, n in enumerate(sizes):
    np.savez_compressed(os.path.join(folder, f'cifar10_train_{shard}.npz'),
                        image=rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
                        label=(np.arange(n) % 10).astype(np.uint8))


def test_packing_round_trips_the_images_and_holds_out_a_fixed_subset(tmp_path):
  _shards(tmp_path)
  packed = pack.pack(str(tmp_path), str(tmp_path / 'packed'), (0, 1), heldout_shard=2, heldout=12)
  assert [os.path.basename(p) for p in packed] == [
      'cifar10_train_0.npy.xz', 'cifar10_train_1.npy.xz', 'cifar10_heldout2_12.npy.xz']
  out = pack.unpack(str(tmp_path / 'packed'), str(tmp_path / 'npz'))
  assert sorted(os.path.basename(p) for p in out) == [
      'cifar10_heldout2_12.npz', 'cifar10_train_0.npz', 'cifar10_train_1.npz']
  for shard in (0, 1):
    with np.load(tmp_path / f'cifar10_train_{shard}.npz') as a, \
        np.load(tmp_path / 'npz' / f'cifar10_train_{shard}.npz') as b:
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])
  index = np.sort(np.random.default_rng(0).choice(50, 12, replace=False))
  with np.load(tmp_path / 'cifar10_train_2.npz') as a, \
      np.load(tmp_path / 'npz' / 'cifar10_heldout2_12.npz') as b:
    np.testing.assert_array_equal(a['image'][index], b['image'])
  with pytest.raises(ValueError, match='also a training shard'):
    pack.pack(str(tmp_path), str(tmp_path / 'x'), (0, 2), heldout_shard=2)
  with pytest.raises(FileNotFoundError, match='prepare.sh'):
    pack.unpack(str(tmp_path / 'npz'), str(tmp_path / 'y'))


def test_the_configurations_start_with_the_references_one_axis_at_a_time():
  bases = {network: {k: v for k, v in plan.network_defaults(network).items() if k != 'tol'}
           for network in plan.NETWORKS}
  assert bases['vgg5'] == {'steps': 'fixed', 'relax_mode': 'sync', 'nudged_phases': 'sequential'}
  assert bases['vgg13'] == {'steps': 'adaptive', 'relax_mode': 'async',
                            'nudged_phases': 'sequential'}
  order = plan.configurations(bases)
  assert order[0] == plan.REFERENCE
  assert len(order) == len({tuple(sorted(c.items())) for c in order}) == 4 * 2 ** len(plan.AXES)
  first = order[:2 * (1 + len(plan.AXES))]
  assert {c['network'] for c in first} == {'vgg5', 'vgg13'}
  for config in first:
    base = dict(network=config['network'], batch='128', dtype='float32', **bases[config['network']])
    assert sum(config[k] != base[k] for k in plan.AXES) <= 1, config
  assert {c['network'] for c in order[len(first):2 * len(first)]} == {'deep8', 'vgg11'}
  args = plan.benchmark_args(order[0], 1e-4, width=32, t1=4, steps=1, compare_fp32=True)
  assert '--tol=0.0' in args and '--t1=4' in args and '--compare_fp32' in args
  assert not any(a.startswith('--t2') for a in args)
  adaptive = dict(order[0], steps='adaptive')
  assert '--tol=1e-05' in plan.benchmark_args(adaptive, 1e-5)
  small = plan.configurations(bases, batches=('8', '16'))
  assert small[0] == dict(plan.REFERENCE, batch='8')


def _record(config, examples_per_s, step_s, compile_s=10.0, **extra):
  return dict(config=config, examples_per_s=examples_per_s, step_s_median=step_s,
              compile_s=compile_s, flags={'t1': 250, 't2': 25}, args=['--a', '--compare_fp32'],
              **extra)


def test_the_slowest_configuration_and_the_training_run_sized_to_the_budget():
  records = [_record(plan.REFERENCE, 400.0, 0.32),
             _record(dict(plan.REFERENCE, network='vgg13'), 100.0, 1.28),
             dict(config=plan.REFERENCE, error='timed out after 100 s')]
  assert plan.slowest(records) == ['--a']  # without the cosine comparison
  assert plan.slowest(records[2:]) is None
  # 400 ex/s: an epoch of 20,000 images and the held-out 2,000 (250 of 300 steps) ~ 59.6 s.
  fast = plan.train_flags(records, 250.0)
  assert fast['epochs'] == 3 and fast['train_subset'] == 0
  assert fast['epoch_s'] == pytest.approx(1.1 * (20000 + 2000 * 250 / 300) / 400, abs=0.1)
  # Too slow for 2 epochs of 20,000: fewer images, so that 2 fit.
  slow = plan.train_flags([_record(plan.REFERENCE, 100.0, 1.28)], 250.0)
  assert slow['epochs'] == 2 and 0 < slow['train_subset'] < 20000
  assert 2 * slow['epoch_s'] <= 250.0 - 30.0 - 2 * 10.0 + 1
  assert plan.train_flags(records, 250.0, max_epochs=2)['epochs'] == 2
  assert plan.train_flags([], 250.0)['epochs'] == 2  # nothing measured: 2 epochs, a guess


def test_check_names_what_would_not_come_back(tmp_path):
  out = tmp_path / 'out'
  (out / 'a' / 'b' / 'c').mkdir(parents=True)
  for name in ('one.txt', 'two.jsonl'):
    (out / name).write_text('x')
  assert plan.check(str(out)) == []
  (out / 'a' / 'b' / 'c' / 'deep.txt').write_text('x')
  (out / 'bad name.txt').write_text('x')
  for i in range(6):
    (out / f'f{i}').write_text('x')
  problems = plan.check(str(out))
  assert any('more than 2 folders down' in p for p in problems)
  assert any('bad name.txt' in p for p in problems)
  assert any('more than 8' in p for p in problems)
  assert 'bench.jsonl: missing' in plan.missing(str(out))


@pytest.mark.slow
def test_the_device_script_runs_whole_at_tiny_sizes(tmp_path):
  """rehearse.sh with the interpreter of the tests (its packages, no wheels) on packed
  stand-in images: every stage leaves its files, and OUT would come back whole."""
  data = tmp_path / 'shards'
  data.mkdir()
  _shards(data, (300, 300, 0, 0, 100))  # 512 of the 600 training images are used
  pack.pack(str(data), str(tmp_path / 'packed'), (0, 1), heldout_shard=4, heldout=40)
  (tmp_path / 'no_wheels').mkdir()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # one CPU device, as there
  # Limits for a loaded 2-core machine (a tiny configuration compiles in about 10 s alone).
  env.update(ACCEL_TOTAL_S='540', ACCEL_PROBE_S='150', ACCEL_BENCH_S='150', ACCEL_CONFIG_S='100',
             ACCEL_TRACE_S='90')
  env.update(ACCEL_REHEARSE_VENV='none', ACCEL_PREPARE='0',
             ACCEL_WHL_DIR=str(tmp_path / 'no_wheels'), ACCEL_DATA_DIR=str(tmp_path / 'packed'),
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'],
             PYTHONPATH=ROOT)
  out = tmp_path / 'out'
  proc = subprocess.run(['bash', os.path.join(ROOT, 'experiments', 'accelerator', 'rehearse.sh'),
                         str(out)], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert 'comes back whole' in proc.stdout
  lines = [json.loads(l) for l in open(out / 'bench.jsonl')]
  assert lines[0]['config'] == dict(plan.REFERENCE, batch='8')
  assert lines[0]['flops']['total'] > 0 and lines[0]['utilisation'] > 0
  summary = json.load(open(out / 'summary.json'))
  assert [r['epoch'] for r in summary['train']] == [1, 2]
