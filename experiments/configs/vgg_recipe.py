"""The deep-CRNN recipe for the VGG configs (`cifar10_vgg11`, `cifar10_vgg13`,
`cifar100_vgg16`), and their config argument.

A VGG config takes one argument, `--config=experiments/configs/cifar10_vgg11.py:ARG`, with
ARG = `VARIANT[,OPTION...]`:

  VARIANT   ep (standard EP, the default) | kd (layer-wise and output distillation) |
            kd_layers (layer-wise KD only) | kd_output (output distillation only) |
            les (local error signals) | les_kd (LES + layer-wise and output KD)
  width=N   every conv layer's channels divided by N (same depth and pools)
  links     long skip links inside the energy, from the lower layers to the top ones
  subset    the 2-core CPU scale of `ablation_deep`: the offline CIFAR-10 shards
            (`../shared/data/cifar10`: 8,192 training images of shards 0-3, 1,000 test
            images of shard 4), no augmentation, 3 epochs

The recipe is what makes 8-conv CRNNs learn with EP here (docs/RESULTS.md, "Deep CRNNs";
`ablation_deep` on CIFAR-10): per-layer gains calibrated at the free fixed point
(`model.init = data`), a zero readout, asynchronous updates, β = 0.5 with the free phase to a
residual of 1e-5 (at most 60 steps, nudged 20), one SGD rate 0.05 for every layer, per-unit
signal normalisation, signals on the top four conv layers at a constant κ = 0.025 (below the
stiffness bound of `experiments.signal_strength --curvature` there; every-layer signals at
the paper's κ are past it on 32x32 maps), and a feed-forward twin at the He-style scale 4.9
as the KD teacher (at scale 1 it stays at chance). The signal layers and κ are the same in
every variant, so that `experiments.ablation` (which switches the signals per run itself)
compares runs that differ only in the signals.
"""

from __future__ import annotations

import ml_collections

from ep_jax import network
from experiments.configs import default

VARIANTS = {
    # variant: (LES, layer-wise KD, output KD)
    'ep': (False, False, False),
    'kd': (False, True, True),
    'kd_layers': (False, True, False),
    'kd_output': (False, False, True),
    'les': (True, False, False),
    'les_kd': (True, True, True),
}


def parse_arg(arg: str | None) -> dict:
  """`'kd,width=8,links'` -> {'variant': 'kd', 'width': 8, 'links': True, 'subset': False}."""
  parts = [p.strip() for p in (arg or 'ep').split(',') if p.strip()] or ['ep']
  variant, options = parts[0], parts[1:]
  if variant not in VARIANTS:
    raise ValueError(f'unknown VGG config variant {variant!r}; one of {sorted(VARIANTS)} '
                     '(then ,width=N ,links ,subset)')
  out = {'variant': variant, 'width': 1, 'links': False, 'subset': False}
  for option in options:
    name, _, value = option.partition('=')
    if name == 'width' and value.isdigit() and int(value) >= 1:
      out['width'] = int(value)
    elif name in ('links', 'subset') and not value:
      out[name] = True
    else:
      raise ValueError(f'unknown VGG config option {option!r}; options: width=N (a positive '
                       'integer), links, subset')
  return out


def narrowed(layout: str, width: int) -> str:
  """A layout string with every conv layer's channels divided by `width` (at least 1)."""
  layout = network.PRESET_LAYOUTS.get(layout, layout)
  return ','.join(t if not t.isdigit() else str(max(1, int(t) // width))
                  for t in layout.split(','))


def long_links(num_conv: int) -> tuple[tuple[int, int], ...]:
  """Long links (1-based conv numbers) as in `ablation_deep`, scaled to the depth: from the
  first layer to the fifth from the top, the second to the second from the top, the fourth
  to the top."""
  top = num_conv
  return ((1, top - 3), (2, top - 1), (4, top))


def get_config(preset: str, arg: str | None, *, dataset: str) -> ml_collections.ConfigDict:
  """The recipe on the VGG `preset` ('vgg11' | 'vgg13' | 'vgg16') for the tfds `dataset`."""
  options = parse_arg(arg)
  if options['subset'] and dataset != 'cifar10':
    raise ValueError(f'the subset option is the offline CIFAR-10 shards; {dataset} has none')
  config = default.get_config()
  config.data.dataset = dataset
  config.data.augment = True  # random 4-pixel crops and flips, as the reference
  layout = narrowed(preset, options['width'])
  config.model.layout = layout
  num_conv = sum(t.isdigit() for t in layout.split(','))
  config.model.skips = long_links(num_conv) if options['links'] else ()
  config.model.activation = 'hard_sigmoid'
  config.model.init = 'data'
  config.model.init_target = (0.1, 0.3)
  config.model.readout_init_scale = 0.0

  config.ep.estimator = 'symmetric'
  config.ep.beta = 0.5
  config.ep.free_steps = 60
  config.ep.nudged_steps = 20
  config.ep.tol = 1e-5
  config.ep.mode = 'async'

  config.optim.learning_rates = (0.05,) * (num_conv + 1)
  config.optim.momentum = 0.9
  config.optim.weight_decay = 3e-4
  config.optim.schedule = 'cosine'
  config.optim.eta_min = 1e-5
  config.train.epochs = 100
  config.train.batch_size = 128
  config.train.eval_batch_size = 250

  les, kd_layers, kd_output = VARIANTS[options['variant']]
  top = tuple(range(num_conv - 4, num_conv))  # 0-based hidden layers: the top four convs
  signals = config.signals
  signals.les.enabled = les
  signals.les.head = 'fixed'
  signals.les.pool = 'gap'
  signals.les.loss = 'ce'
  signals.les.normalize = 'unit'
  signals.les.layers = top
  signals.kd.enabled = kd_layers or kd_output
  signals.kd.train_teacher = signals.kd.enabled
  signals.kd.layerwise = kd_layers
  signals.kd.output = kd_output
  signals.kd.normalize = 'unit'
  signals.kd.layers = top
  signals.kappa.schedule = 'constant'
  signals.kappa.init = 0.025

  config.teacher.epochs = 100
  config.teacher.learning_rate = 0.05
  config.teacher.batch_size = 128
  config.teacher.init_scale = 4.9

  if options['subset']:
    config.data.dataset = 'npz:../shared/data/cifar10'
    config.data.train_files = ('cifar10_train_[0-3].npz',)
    config.data.test_files = ('cifar10_train_4.npz',)
    config.data.train_subset = 8192
    config.data.test_subset = 1000
    config.data.augment = False
    config.train.epochs = 3
    config.train.batch_size = 64
    config.teacher.epochs = 3
    config.teacher.batch_size = 64
  return config
