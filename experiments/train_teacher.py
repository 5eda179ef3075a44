"""`python -m experiments.train_teacher`: the `ep-jax-train-teacher` command,
`ep_jax.app.teacher_main`."""

from ep_jax.app.teacher_main import define_flags, main, run  # noqa: F401

if __name__ == '__main__':
  run()
