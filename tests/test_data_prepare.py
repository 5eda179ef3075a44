"""tfds download-and-prepare on first use, offline: the real `mnist` builder on fake IDX files.

The download is replaced by local files in MNIST's own format (what the tfds builder parses);
everything else is tfds's real preparation into `array_record` (which needs tensorflow) and
our reader. No network is touched.
"""

import gzip
import os

import numpy as np
import pytest

pytestmark = pytest.mark.tfds
_EXTRA = 'needs the tfds extra (pip install -r requirements-tfds.txt)'
pytest.importorskip('tensorflow', reason=_EXTRA)
tfds = pytest.importorskip('tensorflow_datasets', reason=_EXTRA)

from ep_jax.app import data  # pylint: disable=g-import-not-at-top


def _write_idx(path, array, magic):
  header = np.asarray([magic, array.shape[0], *array.shape[1:]], '>u4').tobytes()
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist_download(tmp_path, monkeypatch):
  from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top

  rng = np.random.RandomState(0)
  arrays = {'train_data': rng.randint(0, 256, (40, 28, 28)),
            'train_labels': rng.randint(0, 10, (40,)),
            'test_data': rng.randint(0, 256, (12, 28, 28)),
            'test_labels': rng.randint(0, 10, (12,))}
  files = {}
  for key, array in arrays.items():
    path = str(tmp_path / f'{key}.gz')
    _write_idx(path, array, 2051 if key.endswith('data') else 2049)
    files[key] = path
  calls = []

  def fake_download_and_extract(self, url_or_urls):
    calls.append(url_or_urls)
    assert set(url_or_urls) == set(files), url_or_urls
    out = {}
    for key, path in files.items():  # what download_and_extract returns: extracted files
      raw = path[:-3]
      with gzip.open(path, 'rb') as src, open(raw, 'wb') as dst:
        dst.write(src.read())
      out[key] = raw
    return out

  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                      fake_download_and_extract)
  monkeypatch.setattr(data, 'download_host_reachable', lambda host, port: True)
  monkeypatch.setattr(mnist, '_TRAIN_EXAMPLES', 40)
  monkeypatch.setattr(mnist, '_TEST_EXAMPLES', 12)
  return arrays, calls


def test_mnist_is_prepared_on_first_use_then_read(tmp_path, fake_mnist_download):
  arrays, calls = fake_mnist_download
  data_dir = str(tmp_path / 'tfds')
  train, test, info = data.load_dataset('mnist', data_dir=data_dir)
  assert len(calls) == 1
  assert info.input_shape == (28, 28, 1) and info.num_classes == 10
  assert os.path.isdir(os.path.join(data_dir, 'mnist'))
  # tfds stores the examples in a shuffled (hashed-key) order: compare (image, label) pairs.
  for split, key in ((train, 'train'), (test, 'test')):
    got = sorted((img[..., 0].tobytes(), int(l)) for img, l in zip(split.images, split.labels))
    want = sorted((img.astype(np.uint8).tobytes(), int(l))
                  for img, l in zip(arrays[f'{key}_data'], arrays[f'{key}_labels']))
    assert got == want, key
  # Prepared once: the second load reads the array_record files without downloading.
  again, _, _ = data.load_dataset('mnist', data_dir=data_dir)
  assert len(calls) == 1
  np.testing.assert_array_equal(again.images, train.images)


def test_unprepared_dataset_without_network_fails_at_once(tmp_path, monkeypatch):
  probed = []
  monkeypatch.setattr(data, 'download_host_reachable',
                      lambda host, port: probed.append((host, port)) or False)
  with pytest.raises(ValueError, match=r"'mnist' is not prepared in .* cannot be downloaded: "
                                       r'storage.googleapis.com is unreachable.*mnist5k'):
    data.load_dataset('mnist', data_dir=str(tmp_path / 'tfds'))
  assert probed == [('storage.googleapis.com', 443)]
  # Finished downloads in the cache: tfds may prepare offline, so no probe stops it.
  downloads = tmp_path / 'tfds2' / 'downloads'
  downloads.mkdir(parents=True)
  (downloads / 'storage.googleapis.com_mnist.INFO').write_text('{}')
  monkeypatch.setattr(tfds, 'data_source', lambda *a, **k: (_ for _ in ()).throw(
      RuntimeError('tfds reached')))
  with pytest.raises(RuntimeError, match='tfds reached'):
    data.load_dataset('mnist', data_dir=str(tmp_path / 'tfds2'))
