"""Equilibrium Propagation for deep convolutional convergent RNNs (CRNNs) in JAX.

A CRNN settles to a fixed point of a primitive function Φ; Equilibrium Propagation estimates the
loss gradient from the change of the local quantity ∂Φ/∂θ between the free fixed point and
fixed points nudged towards the target. The library:

  network          `NetworkSpec` (hashable, static under `jit`), layout strings, VGG presets,
                   parameter and state initialisation.
  energy           Φ as a sum of layer interactions, the readout (`logits`) and the costs.
  connections      user-defined connection kinds (`ConnectionKind`: a drive and an init) and
                   the extra edges (`Edge`) they add to Φ and the dynamics.
  relaxation       the fixed-point dynamics (`relax`: `while_loop` with a tolerance;
                   `relax_fixed`: a fixed number of steps), sync/async updates, damping.
  estimators       the EP gradient estimators as β stencils (`STENCILS`, `ep_gradient`,
                   `jitted_ep_gradient`) and the BPTT baseline; `EPConfig`.
  inference        `predict`: relax from zero states, then the readout's logits.
  reference_grads  BPTT and implicit (fixed-point) gradients, to measure EP against.
  initialization   init modes: PyTorch, He-style, per-layer gains, data-dependent calibration.
  optim            optax SGD/Adam with per-layer learning rates and schedules.
  train_step       the jittable train and eval steps and the per-layer diagnostics.
  signals, kappa, teacher   layer-wise learning signals (local errors, distillation), their
                   κ schedules, the backprop teacher.
  data, checkpointing, metrics_io, train, sweep, gdu   the training application.
  configs          the experiment configs (`ep_jax.configs.quickstart.get_config()`, ...).

`import ep_jax` imports no submodule; each loads on first access (`ep_jax.estimators`) or with
`from ep_jax import estimators`. The math is in docs/METHOD.md.
"""

import importlib as _importlib

__version__ = '0.1.0'

__all__ = [
    'activations', 'checkpointing', 'configs', 'connections', 'data', 'energy', 'estimators',
    'gdu',
    'inference', 'initialization', 'kappa', 'metrics_io', 'network', 'optim',
    'reference_grads', 'relaxation', 'signals', 'sweep', 'teacher', 'train', 'train_step',
]


def __getattr__(name: str):
  if name in __all__:
    return _importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(__all__))
