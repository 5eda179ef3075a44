"""Tests for ep_jax.app.checkpointing (orbax wrapper)."""

import gc
import hashlib
import math
import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ep_jax.app.checkpointing import CheckpointError, Checkpointer

# When a restore fails, orbax/tensorstore leaves some read coroutines
# un-awaited; their GC-time "never awaited" noise is orbax-internal.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_garbage_inside_test():
    yield
    gc.collect()  # so that noise is emitted (and filtered) here, not at exit


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    key: jax.Array  # typed jax.random.key
    raw_key: jax.Array  # legacy uint32 PRNGKey
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


TX = optax.sgd(0.1, momentum=0.9)


def make_state(seed=0, width=4):
    k = jax.random.PRNGKey(seed)
    params = {
        "w": jax.random.normal(k, (3, width)),
        "b": jnp.zeros((width,), jnp.float32),
    }
    tx = TX
    opt_state = tx.init(params)
    # take one step so the momentum trace is non-trivial
    grads = jax.tree.map(jnp.ones_like, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return TrainState(
        step=jnp.asarray(seed + 1, jnp.int32),
        params=params,
        opt_state=opt_state,
        key=jax.random.key(seed + 7),
        raw_key=jax.random.PRNGKey(seed + 11),
        tx=tx,
    )


def assert_states_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jnp.issubdtype(y.dtype, jax.dtypes.prng_key)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def dir_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(os.path.relpath(p, path).encode())
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_roundtrip_concrete_and_abstract_target(tmp_path):
    state = make_state(seed=3)
    extra = {"epoch": 5, "data_seed": 1234, "history": [{"acc": 0.5}], "config": {"lr": 0.1}}
    ckpt = Checkpointer(tmp_path / "ckpt")
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    ckpt.save(5, state, extra=extra, metrics={"test_accuracy": np.float32(0.75)})
    assert ckpt.latest_step() == 5
    ckpt.close()

    # fresh instance (as after a restart), concrete target of different values
    ckpt = Checkpointer(tmp_path / "ckpt")
    assert ckpt.all_steps() == [5]
    restored, rextra = ckpt.restore(make_state(seed=0))
    assert_states_equal(restored, state)
    assert rextra == extra
    assert isinstance(restored, TrainState)
    assert isinstance(restored.opt_state[0], optax.TraceState)
    assert restored.raw_key.dtype == jnp.uint32
    # restored key is usable
    jax.random.normal(restored.key, (2,))

    # abstract target from eval_shape
    abstract = jax.eval_shape(lambda: make_state(seed=0))
    restored2, _ = ckpt.restore(abstract, step=5)
    assert_states_equal(restored2, state)
    assert isinstance(restored2.params["w"], jax.Array)
    ckpt.close()


def test_keeps_last_n_plus_best(tmp_path):
    state = make_state()
    ckpt = Checkpointer(tmp_path, max_to_keep=2, best_metric="test_accuracy", best_mode="max")
    accs = [0.1, 0.9, 0.3, float("nan"), 0.5, 0.4]
    for step, acc in enumerate(accs):
        ckpt.save(step, state, extra={"epoch": step}, metrics={"test_accuracy": acc, "loss": 1.0})
    assert ckpt.all_steps() == [1, 4, 5]
    assert ckpt.best_step() == 1
    assert sorted(int(n) for n in os.listdir(tmp_path) if n.isdigit()) == [1, 4, 5]
    _, extra = ckpt.restore_best(state)
    assert extra == {"epoch": 1}
    ckpt.close()
    # best survives a restart (metrics are re-read from disk)
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    assert ckpt.best_step() == 1
    ckpt.save(6, state, extra={"epoch": 6}, metrics={"test_accuracy": 0.2})
    assert ckpt.all_steps() == [1, 5, 6]
    ckpt.close()


def test_best_mode_min(tmp_path):
    state = make_state()
    ckpt = Checkpointer(tmp_path, max_to_keep=1, best_metric="test_loss", best_mode="min")
    for step, loss in enumerate([3.0, 0.5, 2.0, 1.0]):
        ckpt.save(step, state, extra={}, metrics={"test_loss": loss})
    assert ckpt.all_steps() == [1, 3]
    assert ckpt.best_step() == 1
    ckpt.close()


def test_refuses_to_overwrite_existing_step(tmp_path):
    state = make_state()
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, state, extra={"v": 1}, metrics={"test_accuracy": 0.1})
    before = dir_digest(tmp_path / "1")
    with pytest.raises(CheckpointError, match="already exists"):
        ckpt.save(1, make_state(seed=5), extra={"v": 2}, metrics={"test_accuracy": 0.2})
    assert dir_digest(tmp_path / "1") == before
    # non-JSON extra fails before anything is written
    with pytest.raises(TypeError):
        ckpt.save(2, state, extra={"bad": object()}, metrics={})
    assert ckpt.all_steps() == [1]
    ckpt.close()


def _save_three(path):
    state = make_state()
    ckpt = Checkpointer(path, max_to_keep=3)
    for step in (1, 2, 3):
        ckpt.save(step, state, extra={"epoch": step}, metrics={"test_accuracy": 0.1 * step})
    ckpt.close()
    return state


def _garble(step_dir, only_under=None):
    n = 0
    for root, _, files in os.walk(step_dir):
        if only_under and only_under not in os.path.relpath(root, step_dir).split(os.sep):
            continue
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage\xff" * 3)
            n += 1
    assert n > 0


def test_corrupt_array_data_raises_and_others_intact(tmp_path):
    state = _save_three(tmp_path)
    digests = {s: dir_digest(tmp_path / str(s)) for s in (1, 2)}
    _garble(tmp_path / "3", only_under="state")  # all pytree files of step 3

    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    assert ckpt.all_steps() == [1, 2, 3]
    with pytest.raises(CheckpointError) as ei:
        ckpt.restore(state)  # latest == 3
    msg = str(ei.value)
    assert str(tmp_path / "3") in msg
    assert "corrupt" in msg and "new workdir" in msg and "move this step directory" in msg
    assert "Nothing was deleted" in msg
    # nothing was deleted or modified, earlier steps still restore
    assert ckpt.all_steps() == [1, 2, 3]
    assert os.path.isdir(tmp_path / "3")
    for s, d in digests.items():
        assert dir_digest(tmp_path / str(s)) == d
    restored, extra = ckpt.restore(state, step=2)
    assert_states_equal(restored, state)
    assert extra == {"epoch": 2}
    ckpt.close()


def test_fully_garbled_step_raises_on_open(tmp_path):
    state = _save_three(tmp_path)
    digests = {s: dir_digest(tmp_path / str(s)) for s in (1, 2)}
    _garble(tmp_path / "3")  # every file, incl. orbax's metrics file
    garbled = dir_digest(tmp_path / "3")
    with pytest.raises(CheckpointError) as ei:
        Checkpointer(tmp_path, max_to_keep=3)
    msg = str(ei.value)
    assert str(tmp_path / "3") in msg and "corrupt" in msg and "new workdir" in msg
    assert dir_digest(tmp_path / "3") == garbled
    for s, d in digests.items():
        assert dir_digest(tmp_path / str(s)) == d
    # after the user deletes the bad step, the earlier ones work
    import shutil

    shutil.rmtree(tmp_path / "3")
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    assert ckpt.latest_step() == 2
    restored, _ = ckpt.restore(state)
    assert_states_equal(restored, state)
    ckpt.close()


def test_corrupt_extra_json_raises(tmp_path):
    state = _save_three(tmp_path)
    _garble(tmp_path / "2", only_under="extra")
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    with pytest.raises(CheckpointError, match=str(tmp_path / "2")):
        ckpt.restore(state, step=2)
    ckpt.restore(state, step=3)
    ckpt.close()


@pytest.mark.parametrize(
    "make_target",
    [
        lambda: make_state(width=5),  # different shapes
        lambda: make_state().replace(params={"w": jnp.zeros((3, 4))}),  # missing leaf
        lambda: make_state().replace(  # extra leaf
            params={"w": jnp.zeros((3, 4)), "b": jnp.zeros(4), "c": jnp.zeros(2)}
        ),
        lambda: {"something": jnp.zeros(3)},  # unrelated structure
    ],
    ids=["shape", "missing_leaf", "extra_leaf", "structure"],
)
def test_incompatible_target_raises(tmp_path, make_target):
    state = make_state()
    ckpt = Checkpointer(tmp_path)
    ckpt.save(7, state, extra={"epoch": 7}, metrics={"test_accuracy": 0.5})
    before = dir_digest(tmp_path / "7")
    with pytest.raises(CheckpointError) as ei:
        ckpt.restore(make_target())
    msg = str(ei.value)
    assert str(tmp_path / "7") in msg and "incompatible" in msg and "new workdir" in msg
    assert "delete" not in msg.replace("Nothing was deleted", "")
    assert "config the checkpoint was written with" in msg
    assert dir_digest(tmp_path / "7") == before
    assert ckpt.all_steps() == [7]
    ckpt.close()


def test_restore_missing(tmp_path):
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="No checkpoint"):
        ckpt.restore(make_state())
    with pytest.raises(CheckpointError, match="No checkpoint"):
        ckpt.restore_best(make_state())
    ckpt.save(1, make_state(), extra={}, metrics={"test_accuracy": math.nan})
    with pytest.raises(CheckpointError, match="step 4"):
        ckpt.restore(make_state(), step=4)
    ckpt.close()


def test_failed_save_keeps_earlier_checkpoints(tmp_path):
    class NotAnArray:
        pass

    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    for step in (1, 2):
        ckpt.save(step, {"a": jnp.ones(3) * step}, extra={}, metrics={"test_accuracy": 0.0})
    digests = {s: dir_digest(tmp_path / str(s)) for s in (1, 2)}
    with pytest.raises(Exception):
        ckpt.save(3, {"a": jnp.ones(3), "b": NotAnArray()}, extra={}, metrics={"test_accuracy": 1.0})
    # a successful step 3 would have rotated step 1 out; a failed one must not
    assert ckpt.all_steps() == [1, 2]
    for s, d in digests.items():
        assert dir_digest(tmp_path / str(s)) == d
    ckpt.save(3, {"a": jnp.ones(3)}, extra={}, metrics={"test_accuracy": 0.0})
    assert ckpt.all_steps() == [2, 3]
    ckpt.close()


@pytest.mark.slow
def test_sigkill_right_after_save_is_safe(tmp_path):
    import subprocess
    import sys
    import textwrap

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {repo!r})
        import jax.numpy as jnp
        from ep_jax.app.checkpointing import Checkpointer
        c = Checkpointer({str(tmp_path)!r})
        c.save(1, {{"a": jnp.arange(1000.0)}}, extra={{"epoch": 1}}, metrics={{"test_accuracy": 0.5}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    ckpt = Checkpointer(tmp_path)
    state, extra = ckpt.restore({"a": jnp.zeros(1000)})
    np.testing.assert_array_equal(np.asarray(state["a"]), np.arange(1000.0))
    assert extra == {"epoch": 1}
    ckpt.close()
