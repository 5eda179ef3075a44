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
  signals, kappa   layer-wise learning signals (local errors, distillation) and their κ
                   schedules.
  feedforward      the feed-forward twin (the BP teacher and baseline).
  gdu              gradient-alignment diagnostics (EP estimates vs BPTT and implicit gradients).
  flops            the FLOPs of a relaxation step and of a training step, from the spec.
  activations      the activation family σ of the dynamics.

Each module lists its public names in `__all__`. Every function that takes targets accepts
the integer labels `(B,)` or a mapping with at least 'label' (`energy.as_targets`); inputs
are checked against `spec.input_shape` at the entry points (a ValueError naming both shapes).

These modules are the math: they need jax, optax, flax and numpy only. The training
application lives in `ep_jax.app` (input pipeline, trainer, checkpoints, metrics, teacher
training and I/O, sweeps, and `ep_jax.app.build`: the objects an `ml_collections` config
describes); the core takes arrays, specs and plain arguments only. The experiment
configs and scripts are in the repository's `experiments/`.

`import ep_jax` imports no submodule; each loads on first access (`ep_jax.estimators`) or with
`from ep_jax import estimators`. The math is in docs/METHOD.md.
"""

import importlib as _importlib

__version__ = '0.1.0'

__all__ = [
    'activations', 'app', 'connections', 'energy', 'estimators', 'feedforward', 'flops', 'gdu',
    'inference', 'initialization', 'kappa', 'network', 'optim', 'reference_grads', 'relaxation',
    'signals', 'train_step',
]


def lazy_submodules(package: str, names, namespace: dict):
  """`(__getattr__, __dir__)` for a package whose submodules `names` load on first access."""

  def getattr_(name: str):
    if name in names:
      return _importlib.import_module(f'{package}.{name}')
    raise AttributeError(f'module {package!r} has no attribute {name!r}')

  def dir_():
    return sorted(set(namespace) | set(names))

  return getattr_, dir_


__getattr__, __dir__ = lazy_submodules(__name__, __all__, globals())
