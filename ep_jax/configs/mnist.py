"""MNIST (tfds): a 2-conv CRNN trained with symmetric EP."""

from ep_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'mnist'
  config.model.layout = '32,M,64,M'
  config.ep.beta = 0.5
  config.ep.free_steps = 60
  config.ep.nudged_steps = 15
  config.optim.learning_rates = (0.2, 0.1, 0.05)
  config.train.epochs = 15
  config.train.batch_size = 128
  return config
