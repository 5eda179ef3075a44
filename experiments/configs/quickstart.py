"""Quick start: symmetric EP on scikit-learn's embedded 8x8 digits (no download)."""

from experiments.configs import default


def get_config():
  return default.get_config()
