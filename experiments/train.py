"""`python -m experiments.train`: the `ep-jax-train` command, `ep_jax.app.train_main`."""

from ep_jax.app.train_main import default_workdir, define_flags, main, run  # noqa: F401

if __name__ == '__main__':
  run('python -m experiments.train')
