"""Three floors, arrows down only: the core (`ep_jax` outside `ep_jax.app`) takes arrays, specs
and plain arguments, and its builders, called, load nothing of the application."""

import os
import subprocess
import sys

import pytest

import ep_jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The application and the dependencies only it may load.
APPLICATION = ('ep_jax.app', 'orbax', 'grain', 'ml_collections', 'matplotlib', 'tensorboardX',
               'tensorflow')

# Imports every core module, then builds and runs one small network through each public
# builder: spec (and its dict round trip), init, relaxation, EP and reference gradients,
# signals with a teacher, κ schedules, optimiser, train and eval steps, prediction, GDU.
SCRIPT = '''
import importlib, sys
for name in {core!r}:
  importlib.import_module('ep_jax.' + name)
import jax, jax.numpy as jnp, numpy as np
from ep_jax import (estimators, feedforward, flops, gdu, inference, initialization, kappa,
                    network, optim, reference_grads, relaxation, signals, train_step)

spec = network.make_spec('3,M', input_shape=(4, 4, 1), num_classes=3, dense=(4,),
                         skips=(), kernel_sizes=(3,))
assert network.NetworkSpec.from_dict(spec.to_dict()) == spec
key = jax.random.PRNGKey(0)
params = initialization.init_params(spec, key, mode='pytorch')
x = jax.random.uniform(key, (2, 4, 4, 1))
y = jnp.array([0, 2], jnp.int32)
relaxation.relax(spec, params, x, network.init_states(spec, 2), max_steps=3)
relaxation.relax(spec, params, x, network.init_states(spec, 2), max_steps=3,
                 solver=relaxation.Solver('anderson', memory=2))
train_step.free_state_store(spec, 4)
flops.train_step_flops(spec, 2, free_steps=3, nudged_steps=2)
estimators.ep_gradient(spec, params, x, y, beta=0.5, free_steps=3, nudged_steps=2)
reference_grads.bptt_gradient(spec, params, x, y, steps=3)
inference.predict(spec, params, x, free_steps=3)
feedforward.forward(spec, params, x)
kappa.make_layer_schedule('cos', 1.0, num_layers=2, layers=(0,), total_epochs=4)(1)
teacher = network.init_params(spec, jax.random.PRNGKey(1))
setup = signals.make_signals(spec, num_epochs=4, rng=key, les=signals.LESConfig(()),
                             kd=signals.KDConfig((0,)), kappa_schedule='linear',
                             teacher_params=teacher, teacher_spec=spec)
tx = optim.make_optimizer(spec, params, learning_rates=0.1, schedule='constant')
ep = estimators.EPConfig(free_steps=3, nudged_steps=2)
state = train_step.create_train_state(params, tx, key, setup.frozen)
step = jax.jit(train_step.make_train_step(spec, ep, tx, nudging=setup.nudging))
state, _ = step(state, {{'image': x, 'label': y}})
train_step.make_eval_step(spec, ep)(state.params, {{'image': x, 'label': y}})
gdu.gdu_sweep(spec, params, x, y, betas=(0.1,), estimator_names=('symmetric',),
              max_steps=50, tol=1e-8)
loaded = [n for n in {application!r}
          if any(m == n or m.startswith(n + '.') for m in sys.modules)]
print('loaded:', loaded)
'''


@pytest.mark.slow
def test_the_core_builders_load_nothing_of_the_application():
  core = [m for m in ep_jax.__all__ if m != 'app']
  code = SCRIPT.format(core=core, application=APPLICATION)
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                       check=False, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.splitlines()[-1] == 'loaded: []', out.stdout
