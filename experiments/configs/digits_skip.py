"""`ablation_digits`' deep CRNN with its long skip links, trained by EP + KD.

    python -m experiments.train --config=experiments/configs/digits_skip.py --workdir=DIR

The network and recipe of `ablation_digits` (16,16,M,32,32,M,32,32,M,32,32: 8 conv layers on
the embedded 8x8 digits, data-dependent init, zero readout, async updates over the colour
classes of the layer graph, 30 epochs) with its three learned 1x1 links inside the energy,
conv1 -> conv5, conv2 -> conv7, conv4 -> conv8 (`model.skips`, 1-based conv layer numbers),
which give the upper layers a path from the lower ones that does not run through the chain.

`experiments.train` runs EP + KD (layer-wise distillation, per-unit, κ annealed from 0.1 to 0):
it first trains the BP twin with the same links (`config.teacher`, about 10 s) into
DIR/teacher (`signals.kd.train_teacher`). Standard EP on this network:
`--config.signals.kd.enabled=False`. `experiments.ablation` with this config or with
`ablation_digits` runs the same five runs (it switches the signals per run itself). Measured
on the test split (docs/RESULTS.md, "The ablation with the recipe: long links, κ annealed"):
97.22% in 4 min 01 s on the 2-core VM, the BP twin 99.2%; seeds 1 and 2
(`--config.seed=S`): 90.6% and 96.7%, their twins 98.6% and 98.1%.
"""

from experiments.configs import ablation_digits


def get_config():
  config = ablation_digits.get_config()
  config.signals.kd.enabled = True
  config.signals.kd.train_teacher = True
  return config
