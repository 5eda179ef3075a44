"""CIFAR-10, the reference recipe of Laborieux et al. (2021) (METHOD.md §4).

The reference's command (`--channels 128 256 512 512 --kernels 3 3 3 3 --pools mmmm
--paddings 1 1 1 0 --fc 10 --lrs 0.25 0.15 0.1 0.08 0.05 --wds 3e-4 (each) --mmt 0.9
--lr-decay --epochs 120 --act my_hard_sig --T1 250 --T2 25 --mbs 128 --betas 0.0 1.0
--thirdphase --loss cel --softmax --data-aug`), field by field:
  - network: vgg5, 3x3 kernels with paddings SAME, SAME, SAME, VALID and a max pool after each
    (32 -> 16 -> 8 -> 4 -> 2 -> 1x1x512), softmax readout 512 -> 10 outside the system;
    `hard_sigmoid` = clip(u/2, 0, 1) (the reference's `my_hard_sig`); PyTorch's default init
    (init_scale 1); a max-pool tie's derivative to the window's first maximum (torch).
  - data: `Normalize(mean=(0.4914, 0.4822, 0.4465), std=3 * (0.2023, 0.1994, 0.2010))`;
    training batches `RandomCrop(32, padding=4, padding_mode='edge')` and horizontal flips.
  - EP: symmetric (third phase), β = 1, T1 = 250 free and T2 = 25 nudged steps per phase (fixed:
    tol 0), synchronous updates, states zeroed for each batch.
  - optimiser: batch 128, SGD momentum 0.9, per-layer rates 0.25 / 0.15 / 0.1 / 0.08 / 0.05,
    weight decay 3e-4 on every layer, `CosineAnnealingLR(T_max=100, eta_min=1e-5)` stepped once
    per epoch (annealed over epochs 1-100, 1e-5 for the last 20), 120 epochs.
Remaining differences: the last partial training batch of an epoch is dropped (the reference
trains on it); shuffling and augmentation draw from numpy, not torch; `ep.max_residual` (0.25)
stops a run whose free phase oscillates, which the reference does not check (0 turns it off);
the test set is evaluated in batches of 500 (the reference's 200: the same result).

    python -m experiments.train --config=experiments/configs/cifar10_vgg5.py --workdir=DIR

Needs the tfds extra (CIFAR-10) and a GPU-scale budget (120 epochs at T1 = 250). Not yet run:
no accuracy has been measured with this config; its step speed is in docs/BENCHMARKS.md.
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'cifar10'
  config.data.mean = (0.4914, 0.4822, 0.4465)
  config.data.std = (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)
  config.data.augment = True
  config.data.crop_padding = 4
  config.data.crop_mode = 'edge'
  config.data.flip = True
  config.model.layout = 'vgg5'  # with the preset's paddings SAME, SAME, SAME, VALID
  config.model.kernel_size = 3
  config.model.readout = 'softmax'
  config.model.activation = 'hard_sigmoid'
  config.model.init_scale = 1.0
  config.model.pool_ties = 'first'
  config.ep.estimator = 'symmetric'
  config.ep.beta = 1.0
  config.ep.free_steps = 250
  config.ep.nudged_steps = 25
  config.ep.tol = 0.0
  config.ep.mode = 'sync'
  config.optim.learning_rates = (0.25, 0.15, 0.1, 0.08, 0.05)
  config.optim.momentum = 0.9
  config.optim.weight_decay = 3e-4  # every synapse group
  config.optim.schedule = 'cosine'
  config.optim.eta_min = 1e-5
  config.optim.decay_epochs = 100
  config.optim.schedule_step = 'epoch'
  config.train.epochs = 120
  config.train.batch_size = 128
  config.train.eval_batch_size = 500
  return config
