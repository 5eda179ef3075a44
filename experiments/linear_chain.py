r"""How far a symmetric chain carries its input: the linearised CRNN, layer by layer.

  python -m experiments.linear_chain [--depth=8] [--gains=0.25,0.3,0.4,0.45,0.49] [--tol=1e-4]

Linearise a chain of L layers with symmetric couplings of gain g (each layer's slope times its
weight's norm) around a fixed point: `s_l = g (s_{l-1} + s_{l+1})` for l = 1..L, with the
input s_0 = x and s_{L+1} = 0. Its coupling matrix is tridiagonal Toeplitz, so

* the synchronous relaxation converges iff its spectral radius ρ = 2 g cos(π / (L + 1)) < 1
  (every g < 1/2 at every depth; up to 1 / (2 cos(π / (L + 1))), 0.532 at L = 8, here);
* the fixed point is `s_l = x (r^l - r^{2(L+1)-l}) / (1 - r^{2(L+1)})`, with
  `r = (1 - sqrt(1 - 4 g²)) / (2 g)` < 1: the input's effect falls by about r per layer,
  and r → 1 only as g → 1/2, where ρ → 1 and the relaxation slows down.

A symmetric chain deep enough to matter therefore either transmits its input to the top (g near
1/2, slow relaxation) or relaxes fast with an input-blind top. For each gain this prints ρ (from
the matrix's eigenvalues), r, the top layer's response s_L / x (solved directly and from the
closed form), the per-layer attenuation of the response, and the synchronous steps from zero to
a residual below `--tol`. Inverting r(g): `g = r / (1 + r²)`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from absl import flags

from experiments import cli


def coupling(depth: int, gain: float) -> np.ndarray:
  """The L x L matrix A of `s = A s + g x e_1` (off-diagonals g)."""
  a = np.zeros((depth, depth))
  idx = np.arange(depth - 1)
  a[idx, idx + 1] = a[idx + 1, idx] = gain
  return a


def attenuation(gain: float) -> float:
  """r(g) = (1 - sqrt(1 - 4g²)) / (2g), the per-layer decay of the response (g <= 1/2)."""
  if not 0.0 < gain <= 0.5:
    raise ValueError(f'gain must be in (0, 0.5], got {gain}')
  return (1.0 - math.sqrt(1.0 - 4.0 * gain * gain)) / (2.0 * gain)


def response(depth: int, gain: float) -> np.ndarray:
  """The fixed point s_1..s_L for x = 1, solved directly."""
  b = np.zeros(depth)
  b[0] = gain
  return np.linalg.solve(np.eye(depth) - coupling(depth, gain), b)


def closed_form(depth: int, gain: float) -> np.ndarray:
  """`(r^l - r^{2(L+1)-l}) / (1 - r^{2(L+1)})` for l = 1..L (`1 - l / (L + 1)` at g = 1/2)."""
  r, n = attenuation(gain), 2 * (depth + 1)
  l = np.arange(1, depth + 1)
  if r == 1.0:
    return 1.0 - l / (depth + 1)
  return (r ** l - r ** (n - l)) / (1.0 - r ** n)


def sync_steps(depth: int, gain: float, tol: float, max_steps: int = 100_000) -> int | None:
  """Synchronous steps `s <- A s + g x e_1` from zero until max |Δs| < tol (None: never)."""
  a, s = coupling(depth, gain), np.zeros(depth)
  drive = np.zeros(depth)
  drive[0] = gain
  for t in range(1, max_steps + 1):
    new = a @ s + drive
    if np.max(np.abs(new - s)) < tol:
      return t
    s = new
  return None


def table(depth: int, gains: Sequence[float], tol: float) -> list[dict]:
  """One row per gain (see the module docstring)."""
  rows = []
  for g in gains:
    rho = float(np.max(np.abs(np.linalg.eigvalsh(coupling(depth, g)))))
    row = {'gain': g, 'spectral_radius': rho,
           'spectral_radius_closed_form': 2 * g * math.cos(math.pi / (depth + 1))}
    if rho < 1:  # above g = 1/2 a finite chain still settles, with an oscillating profile
      s = response(depth, g)
      row.update(top_response=float(s[-1]), per_layer=[float(v) for v in s])
    if g <= 0.5:
      row.update(attenuation=attenuation(g),
                 top_response_closed_form=float(closed_form(depth, g)[-1]))
    row['sync_steps_to_tol'] = sync_steps(depth, g, tol) if rho < 1 else None
    rows.append(row)
  return rows


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  gains = [float(g) for g in f.gains.split(',') if g.strip()]
  rows = table(f.depth, gains, f.tol)
  print(f'symmetric linear chain, L = {f.depth} layers, input at layer 0; tol {f.tol:g}')
  print('| g | ρ | r | s_L / x | s_1 … s_L | sync steps to tol |')
  print('|---|---|---|---|---|---|')
  for row in rows:
    layers = ' '.join(f'{v:.3g}' for v in row.get('per_layer', []))
    print(f"| {row['gain']:g} | {row['spectral_radius']:.3f} | {row.get('attenuation', float('nan')):.3f} "
          f"| {row.get('top_response', float('nan')):.3g} | {layers} | {row['sync_steps_to_tol']} |")


def define_flags() -> None:
  flags.DEFINE_integer('depth', 8, 'L, the layers of the chain.')
  flags.DEFINE_string('gains', '0.25,0.3,0.4,0.45,0.49,0.5,0.55', 'Comma-separated gains g.')
  flags.DEFINE_float('tol', 1e-4, 'Residual tolerance of the synchronous relaxation.')


if __name__ == '__main__':
  cli.run(main, define_flags)
