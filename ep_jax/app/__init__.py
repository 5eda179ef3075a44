"""The training application built on the `ep_jax` core.

  config          the config schema: every field, with the quick start's values (`get_config`).
  data            datasets in memory and the grain input pipeline (shuffled, augmented,
                  checkpointable batches; per-process shards).
  build           the objects a config describes, for the core: spec, EP config and solver,
                  data, learning signals (with their κ), a saved teacher.
  train           the EP trainer driven by an `ml_collections` config (`train_and_evaluate`),
                  its optimiser and train state (`build_run`).
  loop            the steps of an epoch, their means and the evaluation pass, shared by the
                  EP trainer, the vmapped-seeds trainer and the backprop teacher.
  checkpointing   orbax checkpoints (`Checkpointer`: keep the last N and the best).
  metrics_io      `metrics.jsonl`, TensorBoard events, progress lines, curves.
  teacher         training the feed-forward twin by backprop, and saving it.
  sweep           hyperparameter sweeps: grids, seeds (vmapped), local and SLURM launchers.
  cli             the command lines' runner: absl flags, short `error: ...` messages.
  train_main      the `ep-jax-train` command (`python -m experiments.train` in a checkout).
  teacher_main    the `ep-jax-train-teacher` command.

Each submodule loads on first access (`ep_jax.app.train`) or with `from ep_jax.app import train`.
"""

from ep_jax import lazy_submodules as _lazy_submodules

__all__ = ['build', 'checkpointing', 'cli', 'config', 'data', 'loop', 'metrics_io', 'sweep', 'teacher',
           'teacher_main', 'train', 'train_main']

__getattr__, __dir__ = _lazy_submodules(__name__, __all__, globals())
