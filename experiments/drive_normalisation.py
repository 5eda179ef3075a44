r"""Can every layer of a deep CRNN be input-driven at a converged free fixed point at init?

  python -m experiments.drive_normalisation --config=experiments/configs/ablation_digits.py \
      [--target_std=0.3] [--centre=1.0] [--rounds=30] [--rate=0.25] [--damping=0.5] \
      [--batch_size=256] [--max_steps=800] [--tol=1e-4]

Starts from the config's network at PyTorch's default init (zero readout) and normalises each
layer's drive u_l (the force `∂Φ/∂s_l`, the activation's argument) at the free fixed point of
one training batch, round by round: the layer's weights and bias are multiplied by
`clip((target_std / std_l)^rate, 0.8, 1.25)`, with std_l the mean over units of the batch-std
of u_l (how much the drive depends on the input), then each channel's bias moves by
`clip(rate (centre - mean_c), ±0.5)` towards `centre` (1: the middle of `hard_sigmoid`'s
linear range [0, 2]). Each round relaxes from zero states (`--max_steps` async steps, damping
`--damping`, tolerance `--tol`) and prints the residual and, per layer, the input share
(`train_step.input_share_of`: the share of the mean square s_l that varies across inputs),
the mean |s_l| and the drive's batch-std. It answers whether a data-dependent init can make the top layers input-driven
(see `experiments.linear_chain` for why a symmetric chain resists it).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from absl import flags

from experiments import cli


def normalise(config, *, target_std: float, centre: float, rounds: int, rate: float,
              damping: float, batch_size: int, max_steps: int, tol: float, print_fn=print):
  """Runs the rounds; returns one dict per relaxation (round 0: the starting init)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ep_jax import initialization, network, relaxation  # pylint: disable=g-import-not-at-top
  from ep_jax.app import build, data, train  # pylint: disable=g-import-not-at-top
  from ep_jax.train_step import input_share_of  # pylint: disable=g-import-not-at-top

  train_split, _, info = build.load_data(config)
  spec = build.build_spec(config, info)
  params = initialization.init_params(spec, train.init_key(config), mode='pytorch',
                                      readout_scale=0.0)
  order = data.epoch_permutation(len(train_split), config.seed, 0)[:batch_size]
  x = jnp.asarray(data.normalize(train_split.images[order], info))
  zeros = network.init_states(spec, x.shape[0])

  @jax.jit
  def measure(p):
    r = relaxation.relax(spec, p, x, zeros, max_steps=max_steps, tol=tol, mode='async',
                         damping=damping)
    drives = relaxation.force(spec, p, x, r.states, None, None, None)
    return r, drives

  history = []
  for k in range(rounds + 1):
    r, drives = measure(params)
    row = {'round': k, 'residual': float(r.residual), 'steps': int(r.steps),
           'input_share': [float(input_share_of(s)) for s in r.states],
           'mean_abs_state': [float(jnp.mean(jnp.abs(s))) for s in r.states],
           'drive_std': [float(jnp.mean(jnp.std(u, axis=0))) for u in drives]}
    history.append(row)
    print_fn(f"round {k}: residual {row['residual']:.1e} in {row['steps']} steps | input "
             f"share {' '.join(f'{v:.2f}' for v in row['input_share'])} | mean |s| "
             f"{' '.join(f'{v:.2f}' for v in row['mean_abs_state'])}")
    if k == rounds:
      break
    layers = []
    for p, u, std in zip(params['layers'], drives, row['drive_std']):
      gain = float(np.clip((target_std / max(std, 1e-4)) ** rate, 0.8, 1.25))
      mean = jnp.mean(u, axis=tuple(range(u.ndim - 1)))  # per channel (per unit if dense)
      layers.append(dict(p, w=p['w'] * gain,
                         b=p['b'] * gain + jnp.clip(rate * (centre - mean * gain), -0.5, 0.5)))
    params = dict(params, layers=tuple(layers))
  return history


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  history = normalise(cli.config_value(_CONFIG), target_std=f.target_std, centre=f.centre,
                      rounds=f.rounds, rate=f.rate, damping=f.damping,
                      batch_size=f.batch_size, max_steps=f.max_steps, tol=f.tol)
  if f.out:
    with open(f.out, 'w') as out:
      json.dump(history, out, indent=1)


def define_flags() -> None:
  global _CONFIG
  _CONFIG = cli.define_config_file(os.path.join(cli.CONFIG_DIR, 'ablation_digits.py'))
  flags.DEFINE_float('target_std', 0.3, "Target batch-std of every layer's drive.")
  flags.DEFINE_float('centre', 1.0, "Target mean of the drive (hard_sigmoid's middle is 1).")
  flags.DEFINE_integer('rounds', 30, 'Normalisation rounds.')
  flags.DEFINE_float('rate', 0.25, 'Step size of a round (exponent of the gain, bias step).')
  flags.DEFINE_float('damping', 0.5, 'Damping of the relaxations.')
  flags.DEFINE_integer('batch_size', 256, 'Training images of the batch.')
  flags.DEFINE_integer('max_steps', 800, 'Step limit of each relaxation.')
  flags.DEFINE_float('tol', 1e-4, 'Residual tolerance of each relaxation.')
  flags.DEFINE_string('out', '', 'Optional JSON file for every round.')


_CONFIG = None

if __name__ == '__main__':
  cli.run(main, define_flags)
