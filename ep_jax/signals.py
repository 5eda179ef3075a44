"""Layer-wise learning signals: local error signals (LES) and knowledge distillation (KD).

The nudging cost of the nudged phases becomes (METHOD.md §3), summed over the batch,

    ℒ(s, y) = ℓ_out(z(s_N), y) + Σ_{l ∈ S} κ_l(e) · ℓ_l(s_l)

* ℓ_out: the label loss `ℓ(z, y)` (cross-entropy, or squared error with an MSE readout), or
  with output KD `(1 - α(e)) ℓ(z, y) + α(e) τ² KL(softmax(z_T/τ) ‖ softmax(z/τ))`, α(e) on a
  schedule of its own (`kd.alpha_schedule`, the kinds of κ; default constant α = kd.alpha).
  κ does not scale it: output distillation is a soft-label change of ℓ, not a layer signal.
* LES on layer l, with `g(s_l)` the global average pool over (H, W) ('gap') or the flattened
  state ('flatten'; dense layers are always taken as they are) and a head `A_l = (W_l, b_l)`,
  either a fixed random projection (`frozen`) or a learned linear head (`params['signals']`):
    'ce'       ℓ_l = CE(A_l g(s_l), y)
    'mse'      ℓ_l = ½ ‖A_l g(s_l) - onehot(y)‖²
    'predsim'  ℓ_l = (1 - m) CE(A_l g(s_l), y) + m ‖S(g(s_l)) - S(onehot(y))‖²_F / B²
               (Nøkland & Eidnes 2019), `S(F)_ij = cos(f_i - mean f_i, f_j - mean f_j)` the
               (row-centred, as in their code) cosine-similarity matrix over the batch.
               Note: this term couples the examples of a batch (the force on example i's s_l
               depends on the other examples' s_l); it is still local in the layer. Summed over
               the batch it contributes `B · m ‖ΔS‖²_F / B²`, so that ℒ / B is the batch mean.
* KD on layer l: `ℓ_l = ½ ‖s_l - t_l(x)‖² / n_l`, `t_l` the activation of the feed-forward
  teacher (`ep_jax.feedforward`) at layer l, `n_l` the units per example of layer l
  (`kd.normalize='layer'`), or `½ ‖s_l - t_l(x)‖²` (`'unit'`); `kd.layerwise=False` keeps
  output distillation only.

Signal strength. A signal teaches layer l only as far as its force `-β κ_l ∂ℓ_l/∂s_l` moves
the layer's units. With `kd.normalize='layer'` a unit's KD force is `β κ_l (s - t) / n_l`
(n_l ≈ 10²-10⁴ for a conv layer); with `'unit'` it is `β κ_l (s - t)`, the order of the output
cost's force on the last layer. LES on the global average pool spreads its force over the
H·W positions (`les.normalize='mean'`); `'unit'` multiplies ℓ_l by H·W, so that each unit
receives the force the pooled feature does. `layer_nudge` and `layer_nudge_signal` (metrics,
`train_step`) measure the result.

Every ℓ_l reads only `s_l` and a target available at layer l (label, head, teacher activation),
so the extra force `-β κ_l ∂ℓ_l/∂s_l` is local and every parameter update stays a contrast of
the states on both sides of its synapse (a learned head's update `-∂ℒ/∂A_l` needs only `s_l`
and `y`). κ comes from `ep_jax.kappa` (per epoch, one κ_l per layer, shared by LES and KD
where both act on layer l); α(e) also comes from `ep_jax.kappa`, both traced per epoch. With
κ = 0 and α = 0 (or output KD off) the cost equals the plain output cost, so EP is unchanged.

Layer indices are 0-based over the hidden layers (every dynamical layer except the output layer
of an MSE readout); heads are keyed by layer name (`spec.layer_names`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ep_jax import energy, feedforward, kappa
from ep_jax._types import PyTree
from ep_jax.network import NetworkSpec

__all__ = [
    'HEADS', 'KDConfig', 'KD_NORMALIZE', 'LESConfig', 'LES_LOSSES', 'LES_NORMALIZE', 'LayerSignals',
    'POOLS', 'SIMILARITY_EPS', 'SignalSetup', 'check_teacher', 'feature_dim', 'features',
    'head_logits', 'init_head', 'init_heads', 'kd_curvature', 'kd_divergence', 'kd_layer_cost',
    'les_cost', 'les_scale', 'make_signals', 'num_hidden', 'resolve_layers', 'signal_curvature',
    'similarity_matrix',
]

HEADS = ('fixed', 'learned')
POOLS = ('gap', 'flatten')
LES_LOSSES = ('ce', 'mse', 'predsim')
LES_NORMALIZE = ('mean', 'unit')
KD_NORMALIZE = ('layer', 'unit')
# Added under the square root of the similarity normaliser, so that an example whose features
# are all equal (e.g. a dead layer) gets a bounded force (at most ~1/sqrt(eps) per unit).
SIMILARITY_EPS = 1e-6


# ----------------------------------------------------------------------------- the losses


def features(s: jax.Array, pool: str) -> jax.Array:
  """`g(s_l)`: `(B, H, W, C)` -> `(B, C)` ('gap') or `(B, H·W·C)` ('flatten'); `(B, n)` as is."""
  if s.ndim == 4 and pool == 'gap':
    return jnp.mean(s, axis=(1, 2))
  return s.reshape(s.shape[0], -1)


def feature_dim(shape: Sequence[int], pool: str) -> int:
  """Width of `g(s_l)` for a per-example state shape."""
  if len(shape) == 3 and pool == 'gap':
    return int(shape[-1])
  n = 1
  for d in shape:
    n *= int(d)
  return n


def init_head(gen: np.random.Generator, dim: int, num_classes: int, *, learned: bool,
              dtype: jax.typing.DTypeLike = jnp.float32) -> dict:
  """A linear head `{'w': (dim, K), 'b': (K,)}`, `w ~ U(±1/sqrt(dim))`.

  A fixed random projection has `b = 0`; a learned head draws `b` like `w` (PyTorch Linear).
  """
  bound = 1.0 / math.sqrt(dim)
  w = gen.uniform(-bound, bound, (dim, num_classes))
  b = gen.uniform(-bound, bound, (num_classes,)) if learned else np.zeros((num_classes,))
  return {'w': jnp.asarray(w, dtype), 'b': jnp.asarray(b, dtype)}


def init_heads(key: jax.Array, spec: NetworkSpec, layers: Sequence[int], pool: str,
               learned: bool) -> dict:
  """`{name: head}` for the hidden layers `layers`.

  Drawn on the host by numpy, seeded with the key's bits: a one-time initialisation of a few
  small matrices, which needs no per-shape compilation of the JAX PRNG.
  """
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  gen = np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())
  return {spec.layer_names[l]: init_head(gen, feature_dim(spec.state_shapes[l], pool),
                                         spec.num_classes, learned=learned)
          for l in layers}


def head_logits(head: dict, feats: jax.Array) -> jax.Array:
  """`A g = g W + b`, `(B, K)`."""
  return feats @ head['w'].astype(feats.dtype) + head['b'].astype(feats.dtype)


def similarity_matrix(f: jax.Array) -> jax.Array:
  """`(B, d) -> (B, B)` cosine similarities of the row-centred features (Nøkland & Eidnes)."""
  fc = f - jnp.mean(f, axis=1, keepdims=True)
  fn = fc / jnp.sqrt(jnp.sum(fc * fc, axis=1, keepdims=True) + SIMILARITY_EPS)
  return fn @ fn.T


def les_cost(kind: str, feats: jax.Array, head: dict, labels: energy.Targets,
             num_classes: int, mix: float = 0.99) -> jax.Array:
  """ℓ_l summed over the batch (scalar) for LES loss `kind` on features `(B, d)`; labels:
  `(B,)` or targets holding them under 'label'."""
  labels = energy.target_labels(labels)
  z = head_logits(head, feats)
  if kind == 'ce':
    return jnp.sum(energy.cross_entropy(z, labels))
  if kind == 'mse':
    return jnp.sum(energy.squared_error(z, labels, num_classes))
  if kind == 'predsim':
    batch = feats.shape[0]
    pred = jnp.sum(energy.cross_entropy(z, labels))
    onehot = jax.nn.one_hot(labels, num_classes, dtype=feats.dtype)
    diff = similarity_matrix(feats) - similarity_matrix(onehot)
    return (1.0 - mix) * pred + mix * jnp.sum(diff * diff) / batch
  raise ValueError(f'unknown LES loss {kind!r}; known: {LES_LOSSES}')


def kd_layer_cost(s: jax.Array, t: jax.Array, normalize: str = 'layer') -> jax.Array:
  """`Σ_batch ½ ‖s_l - t_l‖² / n_l` ('layer') or `Σ_batch ½ ‖s_l - t_l‖²` ('unit'), scalar;
  `t` is a constant target, `n_l` the units per example."""
  _check_choice(normalize, KD_NORMALIZE, 'signals.kd.normalize')
  d = s - t.astype(s.dtype)
  total = 0.5 * jnp.sum(d * d)
  return total / s[0].size if normalize == 'layer' else total


def signal_curvature(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple,
                     cost: Callable[[tuple], jax.Array], weight_layers: Sequence[int] = (),
                     iters: int = 30, key: Optional[jax.Array] = None) -> list[float]:
  """The stiffness of a layer-wise signal's cost, per hidden layer's weights.

  `cost(s)` is the signal's cost summed over the batch, a function of the states `s` (e.g. the
  KD regression `Σ_k ½ ‖s_k - t_k‖²`, or the LES losses of `LayerSignals.les_costs`). For each
  hidden layer l of `weight_layers` (() = all), λ_l is the largest eigenvalue of the
  generalised Gauss-Newton matrix `(1/B) J_lᵀ ∇²_s cost J_l` with respect to layer l's
  weights `w_l`, where `J_l = ∂s(θ)/∂w_l` and `s(θ) = σ(∂Φ/∂s(x, s*; θ))` is one step of the
  dynamics from the fixed point `states` `s*`. w_l reaches the cost through layer l's own
  drive and through its feedback into layer l-1 (and the links). Found by `iters` power
  iterations (jvp, then the cost's Hessian-vector product, then vjp).

  Heavy-ball SGD (rate η, momentum μ) on a quadratic of curvature κ λ is stable only while
  `η κ λ < 2 (1 + μ)`, so λ_l bounds the κ_l that rate η_l can follow: λ grows with a layer's
  positions H·W, fan-in and input scale (a per-unit force on a conv layer sums over its
  positions in the weight gradient). Returns `[λ_l]` (floats) for the sorted `weight_layers`.
  """
  from ep_jax import activations  # local: avoids an import cycle at package import
  weight_layers = resolve_layers(weight_layers, spec, 'weight_layers')
  sigma = activations.get(spec.activation)
  states = tuple(states)
  batch = states[0].shape[0]

  # One jitted product per layer l (static): params, x and the states are arguments, so XLA
  # does not fold them in as constants.
  @functools.partial(jax.jit, static_argnums=0)
  def gauss_newton(l, p, x, s_star, v):
    def one_step(w):
      layer_params = list(p['layers'])
      layer_params[l] = dict(layer_params[l], w=w)
      q = dict(p, layers=type(p['layers'])(layer_params))
      drives = jax.grad(lambda s: energy.primitive(spec, q, x, s))(s_star)
      return tuple(sigma(d) for d in drives)

    w_l = p['layers'][l]['w']
    s, ju = jax.jvp(one_step, (w_l,), (v,))
    _, hju = jax.jvp(jax.grad(cost), (s,), (ju,))
    return jax.vjp(one_step, w_l)[1](hju)[0] / batch

  key = jax.random.PRNGKey(0) if key is None else key
  out = []
  for l in weight_layers:
    w_l = params['layers'][l]['w']
    v = jax.random.normal(jax.random.fold_in(key, l), w_l.shape, w_l.dtype)
    v = v / jnp.linalg.norm(v)
    lam = 0.0
    for _ in range(iters):
      gv = gauss_newton(l, params, x, states, v)
      norm = jnp.linalg.norm(gv)
      lam = float(norm)
      if lam == 0.0:
        break
      v = gv / norm
    out.append(lam)
  return out


def kd_curvature(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple,
                 kd_layers: Sequence[int] = (), weight_layers: Sequence[int] = (),
                 normalize: str = 'unit', iters: int = 30,
                 key: Optional[jax.Array] = None) -> list[float]:
  """`signal_curvature` of the layer-wise KD regression `Σ_k ½ ‖s_k - t_k‖² (/ n_k)` summed
  over the KD layers k (`kd_layers`, () = all hidden; `normalize='layer'` divides by the
  layer's size n_k): its Gauss-Newton matrix is `(1/B) J_lᵀ J_l` on those layers, whatever the
  targets t."""
  _check_choice(normalize, KD_NORMALIZE, 'signals.kd.normalize')
  layers = resolve_layers(kd_layers, spec, 'signals.kd')
  scales = {k: 1.0 / states[k][0].size if normalize == 'layer' else 1.0 for k in layers}

  def cost(s):
    return sum(0.5 * scales[k] * jnp.sum(s[k] * s[k]) for k in layers)

  return signal_curvature(spec, params, x, states, cost, weight_layers, iters, key)


def les_scale(shape: Sequence[int], pool: str, normalize: str) -> float:
  """The factor on ℓ_l: H·W for `normalize='unit'` on the pooled features of a conv layer."""
  _check_choice(normalize, LES_NORMALIZE, 'signals.les.normalize')
  if normalize == 'unit' and len(shape) == 3 and pool == 'gap':
    return float(shape[0] * shape[1])
  return 1.0


def kd_divergence(z: jax.Array, z_teacher: jax.Array, temperature: float) -> jax.Array:
  """Per example `τ² KL(softmax(z_T/τ) ‖ softmax(z/τ))`, `(B,)`."""
  log_pt = jax.nn.log_softmax(z_teacher / temperature, axis=-1)
  pt = jnp.exp(log_pt)
  kl = jnp.sum(pt * log_pt, axis=-1) - jnp.sum(pt.astype(z.dtype) *
                                                energy.log_softmax(z / temperature), axis=-1)
  return temperature ** 2 * kl


# ------------------------------------------------------------------- the Nudging protocol


@dataclasses.dataclass(frozen=True)
class LESConfig:
  """Static LES settings. layers: hidden-layer indices (sorted, resolved)."""
  layers: tuple[int, ...]
  head: str = 'fixed'
  pool: str = 'gap'
  loss: str = 'ce'
  predsim_mix: float = 0.99
  normalize: str = 'mean'


@dataclasses.dataclass(frozen=True)
class KDConfig:
  """Static KD settings. layers: hidden-layer indices (() = output distillation only);
  output: add the output KD term; alpha: α_init of its weight α(e)."""
  layers: tuple[int, ...]
  output: bool = True
  alpha: float = 0.5
  temperature: float = 4.0
  normalize: str = 'layer'


@dataclasses.dataclass(frozen=True)
class LayerSignals:
  """LES and KD learning signals; implements `ep_jax.train_step.Nudging`.

  Attributes:
    spec: the CRNN. kappa_fn: `epoch -> (N,)` κ per layer (`ep_jax.kappa`), 0 off the signals.
    les, kd: the settings of each signal, or None when off.
    teacher_spec: the teacher's spec (KD); its parameters travel in `frozen['teacher']`.
    alpha_fn: `epoch -> α` (scalar), the output KD weight; None: constant `kd.alpha`.

  Pytrees: learned heads at `params['signals']['les'][name]`, fixed heads at
  `frozen['les'][name]`, the teacher at `frozen['teacher']` (name: `spec.layer_names[l]`).
  """
  spec: NetworkSpec
  kappa_fn: Callable
  les: Optional[LESConfig] = None
  kd: Optional[KDConfig] = None
  teacher_spec: Optional[NetworkSpec] = None
  alpha_fn: Optional[Callable] = None

  @property
  def layers(self) -> tuple[int, ...]:
    """Hidden layers that carry a layer-wise signal (the set S)."""
    les = self.les.layers if self.les else ()
    kd = self.kd.layers if self.kd else ()
    return tuple(sorted(set(les) | set(kd)))

  def _name(self, l: int) -> str:
    return self.spec.layer_names[l]

  def targets(self, frozen: PyTree, params: PyTree, batch: dict,
              epoch: jax.typing.ArrayLike) -> dict:
    """`{'label', 'kappa': (N,)}`, plus the fixed heads and the teacher's targets.

    'les_heads': `{name: head}` (fixed heads); 'kd_targets': `{name: t_l (B, *state_shape)}`;
    'teacher_logits': `(B, K)` and 'kd_alpha': α(epoch) (scalar) with output KD. Teacher
    outputs are computed here, inside the step, and are constants of the relaxation
    (stop_gradient); κ and α are traced functions of the (traced) epoch.
    """
    del params
    targets = {'label': batch['label'], 'kappa': self.kappa_fn(epoch)}
    if self.les is not None and self.les.head == 'fixed':
      targets['les_heads'] = frozen['les']
    if self.kd is not None:
      acts, z_teacher = feedforward.forward(self.teacher_spec, frozen['teacher'], batch['image'])
      acts, z_teacher = lax.stop_gradient((acts, z_teacher))
      targets['kd_targets'] = {self._name(l): acts[l] for l in self.kd.layers}
      if self.kd.output:
        targets['teacher_logits'] = z_teacher
        alpha_fn = self.alpha_fn or kappa.constant(self.kd.alpha)
        targets['kd_alpha'] = alpha_fn(epoch)
    return targets

  def _heads(self, params, targets) -> dict:
    return params['signals']['les'] if self.les.head == 'learned' else targets['les_heads']

  def les_costs(self, params: PyTree, states: tuple, targets: dict) -> dict:
    """`{l: ℓ_l}` LES losses summed over the batch (unweighted by κ)."""
    if self.les is None:
      return {}
    heads = self._heads(params, targets)
    return {l: les_scale(self.spec.state_shapes[l], self.les.pool, self.les.normalize)
               * les_cost(self.les.loss, features(states[l], self.les.pool),
                          heads[self._name(l)], targets['label'], self.spec.num_classes,
                          self.les.predsim_mix)
            for l in self.les.layers}

  def kd_costs(self, params: PyTree, states: tuple, targets: dict) -> dict:
    """`{l: ℓ_l}` layer-wise KD losses summed over the batch (unweighted by κ)."""
    del params
    if self.kd is None:
      return {}
    return {l: kd_layer_cost(states[l], targets['kd_targets'][self._name(l)],
                             self.kd.normalize)
            for l in self.kd.layers}

  def signal_cost(self, params: PyTree, states: tuple, targets: dict) -> jax.Array:
    """`Σ_l κ_l ℓ_l(s_l)` summed over the batch (the layer-wise part of ℒ)."""
    k = targets['kappa']
    total = 0.0
    for costs in (self.les_costs(params, states, targets),
                  self.kd_costs(params, states, targets)):
      for l, c in costs.items():
        total = total + k[l].astype(c.dtype) * c
    return total

  def output_cost(self, params: PyTree, states: tuple, targets: dict) -> jax.Array:
    """The output term summed over the batch: ℓ(z, y), or `(1-α) ℓ(z, y) + α τ² KL` with
    α = `targets['kd_alpha']` (α = 0: exactly ℓ(z, y))."""
    label_cost = jnp.sum(energy.example_losses(self.spec, params, states, targets['label']))
    if self.kd is None or not self.kd.output:
      return label_cost
    z = energy.logits(self.spec, params, states)
    kd = jnp.sum(kd_divergence(z, targets['teacher_logits'], self.kd.temperature))
    alpha = targets['kd_alpha'].astype(label_cost.dtype)
    return (1.0 - alpha) * label_cost + alpha * kd

  def cost(self, params: PyTree, states: tuple, targets: dict) -> jax.Array:
    """ℒ = output term + Σ_l κ_l ℓ_l, summed over the batch (scalar)."""
    return self.output_cost(params, states, targets) + self.signal_cost(params, states, targets)

  def metrics(self, params: PyTree, states: tuple, targets: dict) -> dict:
    """'kappa' (N,); 'les_loss' / 'kd_loss' (N,) batch-mean ℓ_l (0 off the layers);
    'kd_output_loss' (mean τ² KL) and 'kd_alpha' (α); 'signal_loss' (mean Σ κ_l ℓ_l)."""
    batch = targets['label'].shape[0]
    n = self.spec.num_layers

    def per_layer(costs):
      values = [jnp.real(costs[l]) / batch if l in costs else jnp.zeros(())
                for l in range(n)]
      return jnp.stack([jnp.asarray(v, jnp.float32) for v in values])

    out = {'kappa': targets['kappa'],
           'signal_loss': jnp.real(self.signal_cost(params, states, targets)) / batch}
    if self.les is not None:
      out['les_loss'] = per_layer(self.les_costs(params, states, targets))
    if self.kd is not None:
      out['kd_loss'] = per_layer(self.kd_costs(params, states, targets))
      if self.kd.output:
        z = energy.logits(self.spec, params, states)
        out['kd_output_loss'] = jnp.mean(
            jnp.real(kd_divergence(z, targets['teacher_logits'], self.kd.temperature)))
        out['kd_alpha'] = targets['kd_alpha']
    return out


# ---------------------------------------------------------------------------- the builder


class SignalSetup(NamedTuple):
  """nudging: a `LayerSignals`, or None when no signal is on (plain EP).
  trainable: learned heads, for `params['signals']` (`{}` if none).
  frozen: constants (fixed heads, teacher parameters), for `TrainState.frozen`."""
  nudging: Optional[LayerSignals]
  trainable: dict
  frozen: dict


def num_hidden(spec: NetworkSpec) -> int:
  """Hidden dynamical layers: all of them except the output layer of an MSE readout."""
  return spec.num_layers - (1 if spec.readout == 'mse' else 0)


def resolve_layers(layers: Sequence[int], spec: NetworkSpec, what: str) -> tuple[int, ...]:
  """0-based hidden-layer indices (negative count from the last hidden); () = all hidden."""
  hidden = num_hidden(spec)
  if not layers:
    return tuple(range(hidden))
  resolved = []
  for l in layers:
    l = int(l)
    if not -hidden <= l < hidden:
      raise ValueError(f'{what}.layers: index {l} is out of range for the {hidden} hidden '
                       f'layers {spec.layer_names[:hidden]} (0-based)')
    resolved.append(l % hidden)
  if len(set(resolved)) != len(resolved):
    raise ValueError(f'{what}.layers has duplicates: {tuple(layers)}')
  return tuple(sorted(resolved))


def _check_choice(value, choices, what):
  if value not in choices:
    raise ValueError(f'{what} must be one of {choices}, got {value!r}')


def check_teacher(teacher_spec: NetworkSpec, spec: NetworkSpec, *, output: bool) -> None:
  """Raises ValueError unless the teacher's hidden states have the CRNN's shapes and its
  activation is bounded where the CRNN's is (a ReLU reference network is not a KD teacher)."""
  hidden = num_hidden(spec)
  want, got = spec.state_shapes[:hidden], teacher_spec.state_shapes[:num_hidden(teacher_spec)]
  if teacher_spec.input_shape != spec.input_shape or want != got:
    raise ValueError(
        f'the teacher does not match the CRNN: teacher input {teacher_spec.input_shape}, '
        f'layer state shapes {got} (layout {teacher_spec.layout!r}, dense '
        f'{teacher_spec.dense}); CRNN input {spec.input_shape}, layer state shapes {want} '
        f'(layout {spec.layout!r}, dense {spec.dense}). Train a teacher with the same '
        'config.model and config.data.')
  if output and teacher_spec.num_classes != spec.num_classes:
    raise ValueError(f'teacher has {teacher_spec.num_classes} classes, the CRNN '
                     f'{spec.num_classes}')
  from ep_jax import activations  # local: avoids an import cycle at package import
  if (teacher_spec.activation in activations.UNBOUNDED
      and spec.activation not in activations.UNBOUNDED):
    raise ValueError(
        f"the teacher's activation {teacher_spec.activation!r} is unbounded, the CRNN's "
        f"{spec.activation!r} is not: its states are no targets for the CRNN's; train the "
        "teacher with the CRNN's activation (config.teacher.activation = '')")
  if teacher_spec.activation != spec.activation:
    logging.warning('teacher activation %r differs from the CRNN\'s %r',
                    teacher_spec.activation, spec.activation)


def make_signals(spec: NetworkSpec, *, num_epochs: int, rng: jax.Array,
                 les: Optional[LESConfig] = None, kd: Optional[KDConfig] = None,
                 kd_layerwise: bool = True, alpha_schedule: str = 'constant',
                 alpha_min: float = 0.0, alpha_gamma: float = 0.1,
                 kappa_schedule: str = 'constant', kappa_init: float = 1.0,
                 kappa_min: float = 0.0, kappa_gamma: float = 0.1,
                 kappa_per_layer: Sequence[float] = (),
                 teacher_params: Optional[PyTree] = None,
                 teacher_spec: Optional[NetworkSpec] = None) -> SignalSetup:
  """Checks the signal settings and builds the learning signals.

  Args:
    spec: the CRNN. num_epochs: E_total of the κ and α schedules. rng: key for the LES heads.
    les, kd: the settings of each signal (None: off), their `layers` as requested: hidden-layer
      indices, negative from the last hidden one, () = every hidden layer; the result holds
      them resolved (`resolve_layers`). kd_layerwise: False keeps output distillation only.
    alpha_schedule, alpha_min, alpha_gamma: α(e) of output KD (`kappa.make_schedule` from
      `kd.alpha`).
    kappa_schedule, kappa_init, kappa_min, kappa_gamma, kappa_per_layer: κ(e) per layer
      (`kappa.make_layer_schedule` on the signal layers).
    teacher_params, teacher_spec: the feed-forward teacher, needed with `kd`.
  Returns:
    a `SignalSetup`; `nudging` is None when neither signal is on.
  Raises:
    ValueError: bad options, layer indices, a missing teacher or one whose state shapes differ.
  """
  if les is None and kd is None:
    return SignalSetup(None, {}, {})
  alpha_fn = None
  trainable, frozen = {}, {}
  if les is not None:
    _check_choice(les.head, HEADS, 'les.head')
    _check_choice(les.pool, POOLS, 'les.pool')
    _check_choice(les.loss, LES_LOSSES, 'les.loss')
    if not 0.0 <= float(les.predsim_mix) <= 1.0:
      raise ValueError(f'les.predsim_mix must be in [0, 1], got {les.predsim_mix}')
    _check_choice(les.normalize, LES_NORMALIZE, 'les.normalize')
    les = dataclasses.replace(les, layers=resolve_layers(les.layers, spec, 'les'),
                              predsim_mix=float(les.predsim_mix))
    learned = les.head == 'learned'
    heads = init_heads(rng, spec, les.layers, les.pool, learned)
    (trainable if learned else frozen)['les'] = heads
  if kd is not None:
    for field, value in (('alpha', float(kd.alpha)), ('alpha_min', float(alpha_min))):
      if not 0.0 <= value <= 1.0:
        raise ValueError(f'kd.{field} must be in [0, 1], got {value}')
    if not kd_layerwise and not kd.output:
      raise ValueError('KD with layerwise=False and output=False distils nothing: turn one '
                       'of them on, or KD off')
    if not float(kd.temperature) > 0.0:
      raise ValueError(f'kd.temperature must be > 0, got {kd.temperature}')
    _check_choice(kd.normalize, KD_NORMALIZE, 'kd.normalize')
    kd = dataclasses.replace(
        kd, layers=resolve_layers(kd.layers, spec, 'kd') if kd_layerwise else (),
        output=bool(kd.output), alpha=float(kd.alpha), temperature=float(kd.temperature))
    # α(e) on the κ schedules' machinery (ep_jax.kappa); the default, constant, is kd.alpha.
    alpha_fn = kappa.make_schedule(alpha_schedule, kd.alpha, total_epochs=num_epochs,
                                   kappa_min=float(alpha_min), gamma=float(alpha_gamma))
    if teacher_params is None or teacher_spec is None:
      raise ValueError('KD needs its teacher: pass teacher_params and teacher_spec')
    check_teacher(teacher_spec, spec, output=kd.output)
    frozen['teacher'] = teacher_params
  layers = tuple(sorted(set(les.layers if les else ()) | set(kd.layers if kd else ())))
  kappa_fn = kappa.make_layer_schedule(kappa_schedule, kappa_init, num_layers=spec.num_layers,
                                       layers=layers, total_epochs=num_epochs,
                                       kappa_min=kappa_min, gamma=kappa_gamma,
                                       per_layer=kappa_per_layer)
  nudging = LayerSignals(spec, kappa_fn, les=les, kd=kd,
                         teacher_spec=teacher_spec if kd is not None else None,
                         alpha_fn=alpha_fn)
  return SignalSetup(nudging, trainable, frozen)
