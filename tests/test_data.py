"""The offline data readers, on tiny files written here in the real formats."""

import gzip
import struct

import numpy as np
import pytest

from namsg.experiments import data


def _idx_bytes(array):
    header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim)
    header += struct.pack('>' + 'I' * array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(directory, n_train=6, n_test=4, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {'train_images': rng.integers(0, 256, (n_train, 28, 28)),
              'train_labels': rng.integers(0, 10, n_train),
              'test_images': rng.integers(0, 256, (n_test, 28, 28)),
              'test_labels': rng.integers(0, 10, n_test)}
    for key, (name, _) in data.MNIST_FILES.items():
        raw = _idx_bytes(arrays[key])
        if gz:
            with gzip.open(directory / (name + '.gz'), 'wb') as f:
                f.write(raw)
        else:
            (directory / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize('gz', [True, False])
def test_mnist_round_trip_warns_about_unofficial_checksums(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    if gz:
        with pytest.warns(UserWarning, match='differs from the official'):
            dataset = data.load_mnist(tmp_path, download=False)
    else:
        dataset = data.load_mnist(tmp_path, download=False)
    np.testing.assert_array_equal(dataset.train.images, arrays['train_images'])
    np.testing.assert_array_equal(dataset.test.labels, arrays['test_labels'])
    assert dataset.train.labels.dtype == np.int32 and str(tmp_path) in dataset.source


def test_missing_mnist_files_are_named_with_where_to_put_them(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / 't10k-labels-idx1-ubyte').unlink()
    with pytest.raises(data.DataError, match='t10k-labels-idx1-ubyte') as info:
        data.load_mnist(tmp_path, download=False)
    assert str(tmp_path) in str(info.value) and data.DATA_DIR_ENV in str(info.value)


def test_truncated_idx_file_is_named(tmp_path):
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / 'train-images-idx3-ubyte'
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(data.DataError, match='train-images-idx3-ubyte.*truncated'):
        data.load_mnist(tmp_path, download=False)


def test_corrupt_gzip_file_is_named(tmp_path):
    _write_mnist(tmp_path, gz=True)
    path = tmp_path / 'train-labels-idx1-ubyte.gz'
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(data.DataError, match='train-labels-idx1-ubyte.gz'):
        data.read_idx(path)


def test_file_of_another_kind_is_refused(tmp_path):
    path = tmp_path / 'train-images-idx3-ubyte'
    path.write_bytes(b'PK\x03\x04 not an idx file')
    with pytest.raises(data.DataError, match='magic'):
        data.read_idx(path)


def test_images_and_labels_of_different_lengths_are_refused(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / 'train-labels-idx1-ubyte').write_bytes(_idx_bytes(np.zeros(5)))
    with pytest.raises(data.DataError, match='do not form an MNIST split'):
        data.load_mnist(tmp_path, download=False)


def test_embedded_sample_is_balanced_and_disjoint():
    dataset = data.load_mnist_sample()
    assert dataset.train.images.shape == (4000, 28, 28)
    assert np.bincount(dataset.test.labels).tolist() == [100] * 10
    assert 'not the full set' in dataset.source


def _write_cifar(directory, per_batch=3, seed=0):
    rng = np.random.default_rng(seed)
    root = directory / 'cifar-10-batches-bin'
    root.mkdir()
    written = {}
    for name in data.CIFAR_TRAIN_FILES + data.CIFAR_TEST_FILES:
        labels = rng.integers(0, 10, per_batch)
        images = rng.integers(0, 256, (per_batch, 3, 32, 32))
        records = np.concatenate([labels[:, None], images.reshape(per_batch, -1)], axis=1)
        (root / name).write_bytes(records.astype(np.uint8).tobytes())
        written[name] = (images, labels)
    return written


def test_cifar10_round_trip(tmp_path):
    written = _write_cifar(tmp_path)
    dataset = data.load_cifar10(tmp_path)
    assert dataset.train.images.shape == (15, 32, 32, 3)
    images, labels = written['test_batch.bin']
    np.testing.assert_array_equal(dataset.test.images, images.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(dataset.test.labels, labels)
    np.testing.assert_array_equal(dataset.train.labels[:3], written['data_batch_1.bin'][1])


def test_cifar10_truncated_and_missing_files_are_named(tmp_path):
    _write_cifar(tmp_path)
    root = tmp_path / 'cifar-10-batches-bin'
    (root / 'data_batch_3.bin').write_bytes((root / 'data_batch_3.bin').read_bytes()[:-7])
    with pytest.raises(data.DataError, match='data_batch_3.bin.*truncated'):
        data.load_cifar10(tmp_path)
    (root / 'test_batch.bin').unlink()
    with pytest.raises(data.DataError, match='test_batch.bin'):
        data.load_cifar10(tmp_path)
