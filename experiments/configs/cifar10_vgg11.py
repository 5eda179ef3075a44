r"""CIFAR-10 on a VGG-11 CRNN (8 conv layers, five 2x2 max pools, the published VGG widths)
with the deep-CRNN recipe (`vgg_recipe`); the signals by the config argument.

    python -m experiments.train --config=experiments/configs/cifar10_vgg11.py:kd --workdir=DIR
    python -m experiments.ablation --config=experiments/configs/cifar10_vgg11.py --workdir=DIR \
        --runs=bp,ep,ep_kd_layers,ep_kd_output,ep_kd,ep_les,ep_les_kd [--seeds=0,1]

ARG = VARIANT[,width=N][,links][,subset]: VARIANT ep (the default) | kd | kd_layers |
kd_output | les | les_kd; width=N divides every layer's channels by N; links adds long skip
links inside the energy; subset trains on the offline CIFAR-10 shards at the 2-core CPU scale
(see `vgg_recipe`). A KD variant trains its BP teacher (the feed-forward twin) into
DIR/teacher first.

Needs the tfds extra (without `subset`) and a GPU-scale budget at full width. Not yet run at
full width: no accuracy has been measured with this config (docs/RESULTS.md, "Summary", has
what has been run).
"""

from experiments.configs import vgg_recipe


def get_config(arg: str | None = None):
  return vgg_recipe.get_config('vgg11', arg, dataset='cifar10')
