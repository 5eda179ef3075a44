"""Quick start: symmetric EP on scikit-learn's embedded 8x8 digits (no download)."""

from ep_jax.configs import default


def get_config():
  return default.get_config()
