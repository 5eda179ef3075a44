"""Thin, fail-loud wrapper around ``orbax.checkpoint`` for training runs.

Layout and retention
--------------------
One ``ocp.CheckpointManager`` manages ``<directory>/<step>/`` with three items
per step:

* ``state``   -- the training pytree (``ocp.args.StandardSave``; jax/numpy
  arrays, typed ``jax.random.key`` arrays and raw ``uint32`` PRNGKey arrays,
  optax states nested in ``flax.struct`` dataclasses, ...);
* ``extra``   -- a JSON dict (``ocp.args.JsonSave``): epoch, data-order seed,
  metric history, config, ...;
* ``metrics`` -- written by orbax itself from the ``metrics`` argument of
  :meth:`Checkpointer.save` and re-read on start-up, so "best" survives
  restarts.

Retention uses orbax's own preservation-policy machinery (present in the
installed orbax 0.12.x)::

    AnyPreservationPolicy([LatestN(n=max_to_keep),
                           BestN(get_metric_fn=score, n=1)])

i.e. a step survives garbage collection if it is among the last
``max_to_keep`` steps OR it is the single best step by ``best_metric``
(``best_mode`` 'max' or 'min').  A single manager/directory (rather than two
managers ``latest/`` + ``best/``) means the best step is never written twice
and ``all_steps()`` is simply the directory listing.  A missing or NaN metric
ranks as the worst possible value, so it can never displace a real best.

Safety
------
* Async checkpointing is disabled: ``save`` returns only once the step has been
  committed (orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames it
  atomically), and ``wait_until_finished`` is called as well, so a SIGKILL
  right after ``save`` returns is safe.  A SIGKILL *during* ``save`` leaves only
  an uncommitted ``<step>.orbax-checkpoint-tmp`` directory, which orbax ignores
  when listing steps (and replaces if that same step is saved again).
* Old steps are garbage-collected by orbax only *after* the new step has been
  committed successfully; with synchronous saving, a failing save raises
  before any retention decision is taken, so good earlier checkpoints are never
  deleted or overwritten because of a failure.  Saving to an existing step
  raises :class:`CheckpointError` instead of overwriting.
* Anything that goes wrong while reading a checkpoint (truncated/garbage
  files, pytree of a different structure or shapes) raises
  :class:`CheckpointError` naming the step path and the problem.  Nothing is
  ever deleted or re-initialised as a reaction to an error.

Multi-host
----------
Orbax coordinates multi-process saving/restoring (barriers, primary-host
writes of metadata).  Consequently **every process must call** ``save``,
``restore``/``restore_best`` (and construct the ``Checkpointer``) with the same
arguments in the same order; guarding these calls with
``jax.process_index() == 0`` will deadlock.  For sharded restores pass a target
whose leaves are ``jax.Array`` or ``jax.ShapeDtypeStruct`` carrying the
desired ``sharding``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

from ep_jax.app.metrics_io import jsonable

__all__ = ["CheckpointError", "Checkpointer"]

_STATE = "state"
_EXTRA = "extra"
_METRICS = "metrics"  # orbax's reserved item name for per-step metrics.

# Nothing is deleted: the advice keeps every checkpoint (a step moved aside can be put back).
_ADVICE = (
    "Nothing was deleted. Use a new workdir, or move this step directory out of the "
    "checkpoint folder (after inspecting it) to fall back to an earlier checkpoint."
)
_INCOMPATIBLE_ADVICE = (
    "Nothing was deleted. Resume with the config the checkpoint was written with, or use a "
    "new workdir."
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or incompatible with the target."""


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _metrics_to_floats(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        try:
            out[str(k)] = float(np.asarray(v))
        except (TypeError, ValueError):
            continue  # non-scalar / non-numeric entries are not tracked.
    return out


def _describe(exc: BaseException) -> str:
    """The exception's type and the first line of its message (at most 200 characters; the
    whole error stays on the exception chain)."""
    lines = str(exc).strip().splitlines()
    msg = lines[0] if lines else ""
    if len(msg) > 200:
        msg = msg[:200] + " ..."
    return f"{type(exc).__name__}: {msg}"


def _classify(exc: BaseException) -> str:
    text = str(exc)
    incompatible = (
        "do not match" in text
        or "not compatible with the stored shape" in text
        or "tree structure" in text.lower()
        or ("shape" in text.lower() and "mismatch" in text.lower())
    )
    if incompatible:
        return (
            "it is incompatible with the target pytree (different structure "
            "or shapes; was the model/optimizer config changed?)"
        )
    return "it is corrupt or unreadable (truncated or garbage files?)"


# --------------------------------------------------------------------------
# Checkpointer
# --------------------------------------------------------------------------


class Checkpointer:
    """Keeps the last ``max_to_keep`` checkpoints plus the best one.

    See the module docstring for the orbax mechanism, safety guarantees and
    multi-host contract (all processes must call every method).

    Args:
      directory: checkpoint root; created if missing.
      max_to_keep: number of most recent steps to keep (>= 1).
      best_metric: key in the ``metrics`` dict passed to :meth:`save` used to
        rank checkpoints.
      best_mode: ``'max'`` or ``'min'``.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        best_metric: str = "test_accuracy",
        best_mode: str = "max",
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = int(max_to_keep)
        self.best_metric = best_metric
        self.best_mode = best_mode

        sign = 1.0 if best_mode == "max" else -1.0

        def score(metrics: Any) -> float:
            # Higher is better; missing / NaN / non-numeric ranks worst.
            try:
                v = float(metrics[best_metric])
            except (KeyError, TypeError, ValueError):
                return -math.inf
            return -math.inf if math.isnan(v) else sign * v

        self._score = score
        policy = ocp_managers.AnyPreservationPolicy(
            [
                ocp_managers.LatestN(n=self.max_to_keep),
                ocp_managers.BestN(
                    get_metric_fn=score,
                    reverse=False,  # ascending by score; keep the last (best).
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # best_fn makes orbax persist per-step metrics and provides
            # best_step(); the score is already oriented so mode is 'max'.
            best_fn=score,
            best_mode="max",
            enable_async_checkpointing=False,
            cleanup_tmp_directories=False,
            create=True,
        )
        # Orbax reads every step's metrics file on construction and would
        # fail with an anonymous decode error on a corrupt one: check first so
        # the error names the step.
        self._precheck_metrics_files()
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=options,
            )
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"Could not open checkpoint directory {self.directory}: "
                f"{_describe(e)}. {_ADVICE}"
            ) from e

    # ----------------------------------------------------------------- utils

    def _step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def _precheck_metrics_files(self) -> None:
        if not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            if not name.isdigit():
                continue  # tmp dirs, metadata, ...
            path = os.path.join(self.directory, name, _METRICS, _METRICS)
            if not os.path.isfile(path):
                continue
            try:
                with open(path, "r", encoding="utf-8") as f:
                    json.load(f)
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(
                    f"Checkpoint at {os.path.join(self.directory, name)} is "
                    f"corrupt: its metrics file {path} cannot be parsed "
                    f"({_describe(e)}). {_ADVICE}"
                ) from e

    # ------------------------------------------------------------------ API

    def all_steps(self) -> list[int]:
        """Steps currently on disk (ascending)."""
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Most recent step on disk, or None if there is none."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """Best step by ``best_metric`` (ties -> latest), or None."""
        return self._manager.best_step()

    def save(
        self,
        step_or_epoch: int,
        state_pytree: Any,
        extra: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """Saves ``state_pytree`` + JSON ``extra`` at ``step_or_epoch``.

        Returns only after the checkpoint is fully committed to disk.  Raises
        :class:`CheckpointError` if the step already exists (never overwrites)
        and ``TypeError`` if ``extra`` is not JSON-serialisable (checked
        before anything is written).
        """
        step = int(step_or_epoch)
        extra_json = jsonable(dict(extra or {}), strict=True)
        json.dumps(extra_json)  # fail early, before touching the disk.
        metrics_json = _metrics_to_floats(metrics)
        if step in self._manager.all_steps():
            raise CheckpointError(
                f"Checkpoint at {self._step_path(step)} already exists; refusing "
                f"to overwrite it. {_ADVICE}"
            )
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        _STATE: ocp.args.StandardSave(state_pytree),
                        _EXTRA: ocp.args.JsonSave(extra_json),
                    }
                ),
                metrics=metrics_json,
                force=True,
            )
            self._manager.wait_until_finished()
        except ocp.checkpoint_manager.StepAlreadyExistsError as e:
            raise CheckpointError(
                f"Checkpoint at {self._step_path(step)} already exists; refusing "
                f"to overwrite it. {_ADVICE}"
            ) from e

    def restore(self, target_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores ``(state, extra)`` from ``step`` (default: latest).

        ``target_state`` (concrete arrays or ``jax.ShapeDtypeStruct`` leaves,
        e.g. from ``jax.eval_shape``) defines the structure, dtypes and
        shardings of the result.  Raises :class:`CheckpointError` if there is
        no such checkpoint, or it is corrupt or incompatible.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(
                    f"No checkpoint found in {self.directory}; call "
                    "latest_step() first to decide whether to start fresh."
                )
        step = int(step)
        path = self._step_path(step)
        if step not in self._manager.all_steps():
            raise CheckpointError(
                f"No checkpoint for step {step} at {path} (available steps: "
                f"{self.all_steps()})."
            )
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        _STATE: ocp.args.StandardRestore(target_state, strict=True),
                        _EXTRA: ocp.args.JsonRestore(),
                    }
                ),
            )
            state = restored[_STATE]
            extra = restored[_EXTRA]
        except Exception as e:  # noqa: BLE001
            kind = _classify(e)
            advice = _INCOMPATIBLE_ADVICE if kind.startswith("it is incompatible") else _ADVICE
            raise CheckpointError(
                f"Failed to restore checkpoint at {path}: {kind}. "
                f"Underlying error: {_describe(e)}. {advice}"
            ) from e
        if state is None or not isinstance(extra, dict):
            raise CheckpointError(
                f"Failed to restore checkpoint at {path}: item "
                f"{_STATE if state is None else _EXTRA!r} is missing or "
                f"malformed. {_ADVICE}"
            )
        return state, extra

    def restore_best(self, target_state: Any) -> tuple[Any, dict]:
        """Like :meth:`restore` for :meth:`best_step`."""
        step = self.best_step()
        if step is None:
            raise CheckpointError(f"No checkpoint found in {self.directory}.")
        return self.restore(target_state, step=step)

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
