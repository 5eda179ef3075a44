"""`ablation_digits`' deep CRNN with skip links inside the energy (Hopfield-ResNet style).

    python -m experiments.train --config=experiments/configs/digits_skip.py --workdir=DIR

The same network and recipe as `ablation_digits` (16,16,M,32,32,M,32,32,M,32,32: 8 conv layers
on the embedded 8x8 digits, data-dependent init, zero readout, async updates, 20 epochs) plus
three learned 1x1 links from layer i to layer i+2 inside the energy, each a term
`< s_j, A(s_i) V_ij >` of Φ (`model.skips`, 1-based conv layer numbers):

    conv1 (8x8x16) -> conv3 (4x4x32)   2x2 average pooling
    conv3 (4x4x32) -> conv5 (2x2x32)   2x2 average pooling
    conv5 (2x2x32) -> conv7 (1x1x32)   2x2 average pooling

(the spatial sizes of the layout are 8, 4, 4, 2, 2, 1, 1, 1: each link spans one pool). Async
updates sweep the three colour classes of the layer graph. Its accuracy, if measured, is in
docs/RESULTS.md.
"""

from experiments.configs import ablation_digits


def get_config():
  config = ablation_digits.get_config()
  config.model.skips = ((1, 3), (3, 5), (5, 7))
  config.model.skip_init_scale = 1.0
  return config
