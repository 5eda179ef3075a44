"""The accelerator run's first stage: what the machine is and one jitted EP step on it.

  python3 -m experiments.accelerator.probe

Prints the python, jax and jaxlib versions, the backend and its devices, then one JSON line:
`experiments.benchmark` on a tiny network (8,M,16,M on 32x32x3, batch 8, T1 = 5, T2 = 2, one
timed step, no matmul peak), i.e. compiling and running one EP training step. Needs jax,
flax, optax and numpy only.
"""

from __future__ import annotations

import json
import sys

TINY = ['--layout=8,M,16,M', '--input_shape=32,32,3', '--num_classes=10', '--batch_size=8',
        '--t1=5', '--t2=2', '--steps=1', '--peak_n=0']


def main() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top

  print('python', sys.version.split()[0], sys.executable)
  print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'backend', jax.default_backend())
  print('devices', jax.devices())
  sys.stdout.flush()
  from experiments import benchmark  # pylint: disable=g-import-not-at-top

  out = benchmark.run(TINY)
  print(json.dumps({k: out[k] for k in ('examples_per_s', 'compile_s', 'free_steps',
                                        'peak_memory_mb', 'flops_per_s', 'platform')}),
        flush=True)


if __name__ == '__main__':
  main()
