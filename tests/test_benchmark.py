"""Smoke tests of the benchmark harness (tiny network, one step) and of the fast force path
it measures (explicit feedforward + feedback forces == `jax.grad` of the energy)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax import energy, flops, network, relaxation
from experiments import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--layout=4,M,6,M', '--input_shape=8,8,2', '--num_classes=3', '--batch_size=4',
        '--t1=3', '--t2=2', '--steps=1']
CONTRACT_KEYS = ('examples_per_s', 'compile_s', 'free_steps', 'peak_memory_mb')


def test_ep_step_reports_contract_keys():
  out = benchmark.run(TINY)
  for key in CONTRACT_KEYS:
    assert key in out, key
  assert out['examples_per_s'] > 0 and out['compile_s'] > 0 and out['peak_memory_mb'] > 0
  assert out['free_steps'] == 3 and out['nudged_steps'] == 2
  assert len(out['step_s']) == 1
  assert out['mode'] == 'ep' and out['flags']['estimator'] == 'symmetric'
  assert out['flags']['nudged_phases'] == 'sequential'
  json.dumps(out)  # serialisable
  vmapped = benchmark.run(TINY + ['--nudged_phases=vmapped'])
  assert vmapped['flags']['nudged_phases'] == 'vmapped' and vmapped['examples_per_s'] > 0


def test_flops_and_utilisation_against_the_measured_peak():
  out = benchmark.run(TINY + ['--peak_n=64', '--peak_reps=2'])
  spec = network.make_spec('4,M,6,M', input_shape=(8, 8, 2), num_classes=3)
  count = flops.train_step_flops(spec, 4, free_steps=3, nudged_steps=2)
  assert out['flops'] == {k: round(v) for k, v in count._asdict().items()}
  # step_s_median is rounded to 10 µs in the record
  assert out['flops_per_s'] == pytest.approx(count.total / out['step_s_median'], rel=2e-2)
  assert out['matmul_peak_flops_per_s'] > 0
  assert out['utilisation'] == pytest.approx(
      out['flops_per_s'] / out['matmul_peak_flops_per_s'], rel=1e-3)
  # No datasheet figure off a GPU; none for BPTT, whose work is not counted.
  assert out['datasheet_peak_flops_per_s'] is None and out['utilisation_datasheet'] is None
  assert benchmark.datasheet_peak('NVIDIA H200', 'bfloat16') == 989e12
  assert benchmark.datasheet_peak('cpu', 'float32') is None
  bptt = benchmark.run(TINY + ['--mode=bptt', '--peak_n=0'])
  assert bptt['flops'] is None and bptt['utilisation'] is None
  assert benchmark.run(TINY + ['--peak_n=0'])['matmul_peak_flops_per_s'] is None


def test_a_config_gives_the_network_and_the_ep_settings_flags_win():
  args = benchmark.parse_args(['--config=experiments/configs/ablation_deep.py', '--t1=7'])
  assert (args.t1, args.t2, args.beta, args.relax_mode, args.tol) == (7, 20, 0.5, 'async', 1e-5)
  out = benchmark.run(['--config=experiments/configs/ablation_deep.py', '--width=16',
                       '--batch_size=2', '--t1=3', '--t2=2', '--tol=0', '--steps=1',
                       '--peak_n=0'])
  assert out['network']['layout'] == '1,1,M,2,2,M,4,4,M,4,4,M'
  assert tuple(map(tuple, out['network']['skips'])) == ((0, 4), (1, 6), (3, 7))  # long links
  assert out['flags']['relax_mode'] == 'async' and out['free_steps'] == 3
  assert 'experiment' not in out['flags']
  # A narrowed preset keeps its paddings: vgg5's last convolution is VALID (2x2 -> 1x1).
  vgg5 = benchmark.make_spec(benchmark.parse_args(['--layout=vgg5', '--width=32']))
  assert vgg5.layout == '4,M,8,M,16,M,16,M' and vgg5.paddings[-1] == 'VALID'
  assert vgg5.state_shapes[-1] == (1, 1, 16)


def test_bptt_and_bfloat16_comparison():
  bptt = benchmark.run(TINY + ['--mode=bptt'])
  assert bptt['mode'] == 'bptt' and bptt['free_steps'] == 3 and bptt['examples_per_s'] > 0
  low = benchmark.run(TINY + ['--dtype=bfloat16', '--compare_fp32', '--tol=1e-3'])
  cos = low['grad_cosine_vs_fp32']
  assert set(cos['per_group']) == {'conv1', 'conv2', 'readout'}
  # Mixed bfloat16 on this tiny network: every group within 1e-4 of float32's direction
  # (measured: 0.99998 and above).
  assert cos['min'] == min(cos['per_group'].values())
  assert cos['min'] > 0.9999, cos
  only = benchmark.run(TINY + ['--compile_only'])
  assert only['examples_per_s'] is None and only['compile_s'] > 0


@pytest.mark.slow
def test_cli_prints_one_json_line():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'experiments.benchmark'] + TINY, cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600, check=True)
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stdout
  out = json.loads(lines[0])
  for key in CONTRACT_KEYS:
    assert key in out, key


@pytest.mark.parametrize('layout,dense,readout,geometry,shape', [
    ('5,M,7,M', (6,), 'softmax', {}, (8, 8, 2)),
    ('5,A,7,6,M', (), 'mse', {}, (8, 8, 2)),
    ('5,M,7,A', (6, 4), 'softmax', {'padding': 'VALID'}, (11, 11, 2)),
    ('4,4,M', (), 'softmax', {}, (7, 9, 2)),
    # Per-layer geometry, the reference's last-VALID pattern and mixed kernel sizes.
    ('4,M,5,M,6,M', (), 'softmax', {'paddings': ('SAME', 'SAME', 'VALID')}, (16, 16, 2)),
    ('4,M,5,6,M', (3,), 'softmax',
     {'kernel_sizes': (5, 3, 3), 'paddings': ('VALID', 'SAME', 'VALID')}, (12, 12, 2)),
])
@pytest.mark.parametrize('ties', network.POOL_TIES)
def test_explicit_force_equals_autodiff(x64, layout, dense, readout, geometry, shape, ties):
  spec = network.make_spec(layout, input_shape=shape, num_classes=4, dense=dense,
                           readout=readout, pool_ties=ties, **geometry)
  params = network.init_params(spec, jax.random.PRNGKey(0), dtype=jnp.float64)
  x = jax.random.uniform(jax.random.PRNGKey(1), (3,) + shape, jnp.float64)
  targets = {'label': jnp.array([0, 1, 3])}
  cost = energy.output_cost(spec)
  random_states = tuple(jax.random.uniform(jax.random.PRNGKey(5 + i), (3,) + s, jnp.float64)
                        for i, s in enumerate(spec.state_shapes))
  # Zero and spatially uniform states make max-pool windows tie: the unpooling must route a
  # tie as the derivative of the max does (to the first maximum, or split, per `ties`).
  uniform = tuple(jnp.full((3,) + s, 0.5, jnp.float64) for s in spec.state_shapes)
  zeros = network.init_states(spec, 3, jnp.float64)
  for states in (random_states, uniform, zeros):
    for beta in (None, 0.7):
      for layers in (None, (0, 2), (1,)):
        if layers is not None and max(layers) >= len(states):
          continue
        a = relaxation.force(spec, params, x, states, targets, beta,
                             cost if beta else None, layers)
        b = relaxation.force_autodiff(spec, params, x, states, targets, beta,
                                      cost if beta else None, layers)
        for u, v in zip(a, b):
          np.testing.assert_allclose(u, v, atol=1e-12)
  # A whole async step agrees too (the even half's cached convolutions are reused correctly).
  new = relaxation.step(spec, params, x, random_states, targets, 0.3, cost, 'async')
  ref = list(random_states)
  for parity in (0, 1):
    layers = tuple(range(parity, len(ref), 2))
    forces = relaxation.force_autodiff(spec, params, x, tuple(ref), targets, 0.3, cost, layers)
    for l, f in zip(layers, forces):
      ref[l] = jnp.clip(0.5 * f, 0.0, 1.0)
  for u, v in zip(new, ref):
    np.testing.assert_allclose(u, v, atol=1e-12)


@pytest.mark.parametrize('padding,shape,k', [('SAME', (2, 7, 6, 3), 3), ('VALID', (2, 9, 8, 3), 3),
                                             ('SAME', (2, 8, 8, 2), 5)])
@pytest.mark.parametrize('dtype', [jnp.float64, jnp.complex128])
def test_conv2d_loop_vjp_matches_xla(x64, padding, shape, k, dtype):
  """The hand-written VJP of the relaxation's convolution equals XLA's autodiff of conv2d."""
  scale = 1.0 + (0.5j if dtype == jnp.complex128 else 0.0)
  s = (jax.random.normal(jax.random.PRNGKey(0), shape) * scale).astype(dtype)
  w = (jax.random.normal(jax.random.PRNGKey(1), (k, k, shape[-1], 4)) * scale).astype(dtype)
  y, vjp = jax.vjp(lambda s, w: energy.conv2d_loop(s, w, padding), s, w)
  y_ref, vjp_ref = jax.vjp(lambda s, w: energy.conv2d(s, w, padding), s, w)
  g = (jax.random.normal(jax.random.PRNGKey(2), y.shape) * scale).astype(dtype)
  np.testing.assert_allclose(y, y_ref, atol=1e-12)
  for a, b in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(a, b, atol=1e-10)


def test_digits_batch_and_mixed_precision_cosine():
  args = ['--layout=4,M', '--input_shape=8,8,1', '--batch_size=8', '--data=digits', '--t1=5',
          '--t2=3', '--steps=1', '--dtype=bfloat16', '--compare_fp32']
  out = benchmark.run(args)
  assert out['dtype'] == 'bfloat16' and out['state_dtype'] == 'float32'
  assert set(out['grad_cosine_vs_fp32']['per_group']) == {'conv1', 'readout'}
  assert out['grad_cosine_vs_fp32']['min'] > 0.9
  with pytest.raises(ValueError, match='--data=digits needs'):
    benchmark.run(TINY + ['--data=digits'])
