"""The digits-scale twin of `ablation_deep`: 8 conv layers on the embedded 8x8 digits.

    python -m experiments.ablation --config=experiments/configs/ablation_digits.py --workdir=DIR

The deep-CRNN recipe (docs/RESULTS.md, "Deep CRNNs"): a twin wide enough for its BP twin to
reach 97.8% (16,16,M,32,32,M,32,32,M,32,32: 8 conv layers, 8x8 -> 4x4 -> 2x2 -> 1x1), the
data-dependent init (per-layer gains that put every layer's mean |s| at the free fixed point in
[0.1, 0.3]), a zero readout, asynchronous updates, per-unit signal normalisation with a
constant κ = 0.1, one learning rate 0.05 for every layer, 20 epochs. The BP teacher is the
feed-forward twin at the He-style scale √6/a ≈ 4.9 (at the CRNN's gains it does not train).

The settings the recipe replaces (its baseline in docs/RESULTS.md): --config.model.layout=8,8,M,16,16,M,16,16,M,16,16
--config.model.init=pytorch --config.model.readout_init_scale=1
--config.signals.kd.normalize=layer --config.signals.les.normalize=mean
--config.signals.kappa.schedule=cos --config.signals.kappa.init=1.0
--config.optim.learning_rates='(0.2,0.2,0.15,0.15,0.1,0.1,0.08,0.08,0.05)'
--config.ep.free_steps=40 --config.ep.nudged_steps=15 --config.train.epochs=3
--config.teacher.init_scale=4.0 --config.teacher.epochs=10.
"""

from experiments.configs import ablation_deep


def get_config():
  config = ablation_deep.get_config()
  config.data.dataset = 'digits'
  config.data.train_files = ()
  config.data.test_files = ()
  config.data.train_subset = 0
  config.data.test_subset = 0
  config.model.layout = '16,16,M,32,32,M,32,32,M,32,32'
  config.model.skips = ()  # a plain chain (digits_skip adds the long links)
  config.ep.free_steps = 60
  config.ep.nudged_steps = 20
  config.train.epochs = 20
  config.train.batch_size = 32
  config.train.eval_batch_size = 120
  config.train.log_every_seconds = 30.0
  config.teacher.epochs = 20
  config.teacher.batch_size = 32
  return config
