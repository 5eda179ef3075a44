"""The feed-forward twin of a CRNN (METHOD.md §3): the BP teacher and baseline.

Same layers, pools, activation and parameter pytree as the CRNN of `spec`, but run once
bottom-up instead of relaxed to a fixed point:

    a_0 = x,   a_l = σ(drive_l(a_{l-1}) + Σ_{links i -> l, i < l} D_il(θ_il, a_i)),
    z = W_out flat(a_N) + b_out

with `drive_l` the bottom-up drive of `ep_jax.energy` (`P_l(W_l ⋆ a_{l-1} + b_l)` for a conv
layer, `W_l flat(a_{l-1}) + b_l` for a dense one) and the drives `D_il` of the skip links
(`energy.skip_drive`) and edges (`spec.edges`) that go upwards into layer l. Lateral and
downward edges (src >= dst) have no feed-forward counterpart and are left out of the pass
(their parameters get no gradient there). The activations have the CRNN states'
shapes and range, so they serve as layer-wise targets `t_l(x)` (knowledge distillation);
trained by backprop with optax the twin is also the BP baseline. Training it on a dataset and
saving it is `ep_jax.app.teacher`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ep_jax import activations, connections, energy
from ep_jax.energy import Targets
from ep_jax.network import NetworkSpec, check_input

__all__ = [
    'forward', 'loss_fn', 'make_eval_step', 'make_train_step',
]


def forward(spec: NetworkSpec, params: dict, x: jax.Array) -> tuple[tuple, jax.Array]:
  """One bottom-up pass.

  Args:
    spec: the network (the CRNN's spec or its twin's). params: `network.init_params` layout.
    x: inputs `(B, *spec.input_shape)` (another shape: ValueError).
  Returns:
    `(activations, logits)`: one array per dynamical layer, `(B, *spec.state_shapes[l])`,
    and the readout `(B, num_classes)` (the last activation with an MSE readout).
  """
  check_input(spec, x)
  sigma = activations.get(spec.activation)
  a = x
  acts = []
  links = energy.links(spec)
  for l, p in enumerate(params['layers']):
    u = energy.layer_drive(spec, l, p, a)
    for link in links:
      if link.dst == l and link.src < l:
        u = u + connections.drive(link.kind, params[link.group][link.index], acts[link.src])
    a = sigma(u)
    acts.append(a)
  acts = tuple(acts)
  return acts, energy.logits(spec, params, acts)


def loss_fn(spec: NetworkSpec, params: dict, x: jax.Array, labels: Targets) -> jax.Array:
  """Mean output loss of the feed-forward pass (cross-entropy for a softmax readout);
  labels: `(B,)` or targets holding them under 'label'."""
  acts, _ = forward(spec, params, x)
  return jnp.mean(energy.example_losses(spec, params, acts, labels))


def make_train_step(spec: NetworkSpec, tx: optax.GradientTransformation) -> Callable:
  """`(params, opt_state, batch) -> (params, opt_state, metrics)`, backprop (not jitted)."""

  def train_step(params, opt_state, batch):
    x, labels = batch['image'], batch['label']

    def loss_and_logits(p):
      acts, z = forward(spec, p, x)
      return jnp.mean(energy.example_losses(spec, p, acts, labels)), z

    (loss, z), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(z, -1) == labels)}

  return train_step


def make_eval_step(spec: NetworkSpec) -> Callable:
  """`(params, batch) -> sums` of loss and correct predictions over real (masked) examples."""

  def eval_step(params, batch):
    x, labels = batch['image'], batch['label']
    mask = batch.get('mask', jnp.ones(labels.shape, jnp.float32))
    acts, z = forward(spec, params, x)
    losses = energy.example_losses(spec, params, acts, labels)
    return {'loss_sum': jnp.sum(losses * mask),
            'correct': jnp.sum((jnp.argmax(z, -1) == labels) * mask),
            'count': jnp.sum(mask)}

  return eval_step
