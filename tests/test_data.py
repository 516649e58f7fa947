"""The offline data readers, on tiny files written here in the real formats."""

import gzip
import hashlib
import io
import re
import struct
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest

from namsg.experiments import data

#: CIFAR-10's split sizes, read before any test shrinks them.
FULL_CIFAR_SIZES = dict(data.CIFAR_SIZES)
#: MNIST's: the module's own dict, which no test may change (see mnist_sizes).
FULL_MNIST_SIZES = data.MNIST_SIZES


@pytest.fixture(autouse=True)
def cifar_sizes(monkeypatch):
    """CIFAR-10's split sizes made those of the small files written here (_cifar_arrays: two
    training images a batch, four test images). Autouse: other test files import it."""
    monkeypatch.setattr(data, 'CIFAR_SIZES', dict(train=10, test=4))


@pytest.fixture(autouse=True)
def mnist_sizes(monkeypatch):
    """MNIST's split sizes made a copy that _write_mnist sets to the sizes it writes. Autouse:
    other test files that write MNIST import it."""
    monkeypatch.setattr(data, 'MNIST_SIZES', dict(FULL_MNIST_SIZES))


def _idx_bytes(array):
    header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim)
    header += struct.pack('>' + 'I' * array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(directory, n_train=6, n_test=4, gz=True, seed=0):
    """Small MNIST files in ``directory``; load_mnist then takes their sizes for MNIST's."""
    assert data.MNIST_SIZES is not FULL_MNIST_SIZES, 'import the mnist_sizes fixture'
    data.MNIST_SIZES.update(train=n_train, test=n_test)
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


def swap_mnist_splits(directory):
    """Swap the names of the train-* and t10k-* files in ``directory``, as a user did."""
    for kind in ('images-idx3-ubyte', 'labels-idx1-ubyte'):
        train, = directory.glob('train-%s*' % kind)
        test = directory / train.name.replace('train-', 't10k-')
        train.rename(directory / 'swapping')
        test.rename(train)
        (directory / 'swapping').rename(test)


def test_mnist_training_and_test_files_swapped_are_refused(tmp_path):
    """Swapped train-* and t10k-* files were accepted: the run trained on the 10,000 test
    images, and its summary listed it with the reference runs as the same run."""
    _write_mnist(tmp_path, n_train=6, n_test=4, gz=True)
    swap_mnist_splits(tmp_path)
    with pytest.raises(data.DataError) as error:
        data.load_mnist(tmp_path, download=False)
    assert str(error.value) == (
        'the training files {0}/train-images-idx3-ubyte.gz and {0}/train-labels-idx1-ubyte.gz '
        'hold 4 images and the test files {0}/t10k-images-idx3-ubyte.gz and '
        '{0}/t10k-labels-idx1-ubyte.gz hold 6: MNIST has 6 training and 4 test images, so the '
        'two are swapped; rename them so that the train-* files hold the 6 training images '
        'and the t10k-* files the 4 test images'.format(tmp_path))


def test_mnist_splits_of_other_sizes_are_refused(tmp_path):
    """A partial copy must not pass for MNIST (its runs would be runs on other data)."""
    _write_mnist(tmp_path, n_train=6, n_test=4, gz=False)
    data.MNIST_SIZES.update(test=5)
    with pytest.raises(data.DataError, match=r'the test files .*t10k-images-idx3-ubyte and '
                                             r'.*t10k-labels-idx1-ubyte hold 4 images where '
                                             r'MNIST has 5: they are cut short, swapped with '
                                             r'other files or not MNIST; replace them'):
        data.load_mnist(tmp_path, download=False)
    assert FULL_MNIST_SIZES == dict(train=60000, test=10000)


@pytest.mark.parametrize('gz', [True, False])
def test_mnist_round_trip_logs_unofficial_checksums_in_one_line(tmp_path, gz, caplog):
    """The checksum warning came as Python's raw `file.py:123: UserWarning: ...`, one per
    file; it is one log line naming the files, the official SHA-1s and what it means."""
    arrays = _write_mnist(tmp_path, gz=gz)
    with warnings.catch_warnings():
        warnings.simplefilter('error')          # no warnings.warn any more
        dataset = data.load_mnist(tmp_path, download=False)
    np.testing.assert_array_equal(dataset.train.images, arrays['train_images'])
    np.testing.assert_array_equal(dataset.test.labels, arrays['test_labels'])
    assert dataset.train.labels.dtype == np.int32 and str(tmp_path) in dataset.source
    records = [r for r in caplog.records if r.name == 'namsg.experiments.data']
    if not gz:
        assert records == []                    # no official checksum of unpacked files
        return
    assert [r.levelname for r in records] == ['WARNING']
    message = records[0].getMessage()
    assert '\n' not in message and str(tmp_path) in message
    for name, sha1 in data.MNIST_FILES.values():
        assert '%s.gz (SHA-1 ' % name in message and 'official %s' % sha1 in message
    assert 'results are unaffected' in message and 'results are not those' in message


def test_missing_mnist_files_are_named_with_where_to_put_them(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / 't10k-labels-idx1-ubyte').unlink()
    with pytest.raises(data.DataError, match='t10k-labels-idx1-ubyte') as info:
        data.load_mnist(tmp_path, download=False)
    assert str(tmp_path) in str(info.value) and data.DATA_DIR_ENV in str(info.value)


def _urlopen(answer):
    """urlopen stand-in: ``answer`` is the bytes served, or the exception raised; records the
    URLs asked for (no test reaches the network)."""
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        if isinstance(answer, Exception):
            raise answer
        return io.BytesIO(answer)
    urlopen.asked = asked
    return urlopen


@pytest.mark.parametrize('answer,why', [
    (urllib.error.URLError(OSError(-3, 'Temporary failure in name resolution')),
     r'The download failed: cannot reach (https?://\S+/t10k-images-idx3-ubyte.gz) '
     r'\(\[Errno -3\] Temporary failure in name resolution\)'),
    (urllib.error.HTTPError('u', 403, 'Forbidden', {}, None),
     r'The download failed: (https?://\S+/t10k-images-idx3-ubyte.gz) answered HTTP 403 '
     r'\(Forbidden\)'),
    (b'<html>a captive portal</html>',
     r'The download failed: (https?://\S+/t10k-images-idx3-ubyte.gz) sent 29 bytes that '
     r'are not the official file \(SHA-1 [0-9a-f]{40}, expected c3a25af1')],
    ids=['no network', 'HTTP 403', 'wrong bytes'])
def test_a_failed_download_says_why_and_which_files_to_fetch_by_hand(tmp_path, monkeypatch,
                                                                     answer, why):
    """It said only that the files 'could not be downloaded'."""
    _write_mnist(tmp_path, gz=False)
    for name in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        (tmp_path / name).unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    urlopen = _urlopen(answer)
    monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
    with pytest.raises(data.DataError) as info:
        data.load_mnist(tmp_path)
    message = str(info.value)
    match = re.search(why, message)
    assert match, message
    assert urlopen.asked == [match.group(1)]    # the URL tried is the one named
    assert ('Download t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz by hand (from %s'
            % match.group(1).rsplit('/', 1)[0]) in message
    assert 'into %s' % tmp_path in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before    # nothing left behind


def test_downloaded_files_are_checked_then_renamed_into_place(tmp_path, monkeypatch):
    source = tmp_path / 'source'
    source.mkdir()
    arrays = _write_mnist(source, gz=True)
    served = {name: (source / (name + '.gz')).read_bytes() for name, _ in
              data.MNIST_FILES.values()}
    # These files stand for the official ones: their SHA-1s are the expected ones here.
    monkeypatch.setattr(data, 'MNIST_FILES', {
        key: (name, hashlib.sha1(served[name]).hexdigest())
        for key, (name, _) in data.MNIST_FILES.items()})
    monkeypatch.setattr(urllib.request, 'urlopen', lambda url, timeout=None: io.BytesIO(
        served[url.rsplit('/', 1)[1][:-len('.gz')]]))
    target = tmp_path / 'target'
    target.mkdir()
    dataset = data.load_mnist(target)
    np.testing.assert_array_equal(dataset.train.images, arrays['train_images'])
    assert sorted(p.name for p in target.iterdir()) == sorted(n + '.gz' for n in served)
    assert all((target / (n + '.gz')).stat().st_mode & 0o444 == 0o444 for n in served)


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
    with pytest.raises(data.DataError, match='train-labels-idx1-ubyte.gz: cannot read it .*; '
                                             'replace the file with an intact copy'):
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


def test_cifar10_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(data, 'CIFAR_SIZES', dict(train=15, test=3))
    written = _write_cifar(tmp_path)
    dataset = data.load_cifar10(tmp_path)
    assert dataset.train.images.shape == (15, 32, 32, 3)
    images, labels = written['test_batch.bin']
    np.testing.assert_array_equal(dataset.test.images, images.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(dataset.test.labels, labels)
    np.testing.assert_array_equal(dataset.train.labels[:3], written['data_batch_1.bin'][1])


def test_cifar10_truncated_and_missing_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(data, 'CIFAR_SIZES', dict(train=15, test=3))
    _write_cifar(tmp_path)
    root = tmp_path / 'cifar-10-batches-bin'
    (root / 'data_batch_3.bin').write_bytes((root / 'data_batch_3.bin').read_bytes()[:-7])
    with pytest.raises(data.DataError, match='data_batch_3.bin.*truncated'):
        data.load_cifar10(tmp_path)
    (root / 'test_batch.bin').unlink()
    with pytest.raises(data.DataError, match='test_batch.bin'):
        data.load_cifar10(tmp_path)


def test_mnist_labels_above_9_are_refused(tmp_path):
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / 't10k-labels-idx1-ubyte'
    path.write_bytes(_idx_bytes(np.array([1, 2, 10, 3])))
    with pytest.raises(data.DataError, match='t10k-labels-idx1-ubyte: labels up to 10'):
        data.load_mnist(tmp_path, download=False)


# --- CIFAR-10 in its three layouts, written here from the same pixels ------------------------

def _cifar_arrays(seed=0):
    """Two images a batch, labels in class order across the batches (the order an image folder
    lists them in: class by class, file names in order)."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (10, 32, 32, 3)).astype(np.uint8)
    test = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    return train, np.arange(10), test, np.array([0, 3, 3, 9])


def _release_batches(root, folder_name, train_names, test_names, seed):
    """(the release's folder, [(file, labels, R, G, B planes of each image)]) of a release's
    batch files, two images each."""
    train, train_y, test, test_y = _cifar_arrays(seed)
    folder = root / folder_name
    folder.mkdir(parents=True)
    batches = []
    for images, labels, names in ((train, train_y, train_names), (test, test_y, test_names)):
        per = len(labels) // len(names)
        for i, name in enumerate(names):
            rows = slice(i * per, (i + 1) * per)
            batches.append((folder / name, labels[rows],
                            images[rows].transpose(0, 3, 1, 2).reshape(per, -1)))
    return folder, batches


def write_cifar_python(root, seed=0):
    import pickle
    folder, batches = _release_batches(root, 'cifar-10-batches-py', data.CIFAR_PY_TRAIN,
                                       data.CIFAR_PY_TEST, seed)
    for path, labels, planes in batches:
        path.write_bytes(pickle.dumps({b'data': planes, b'labels': labels.tolist(),
                                       b'batch_label': path.name.encode()}))
    return folder


def write_cifar_binary(root, seed=0):
    folder, batches = _release_batches(root, 'cifar-10-batches-bin', data.CIFAR_TRAIN_FILES,
                                       data.CIFAR_TEST_FILES, seed)
    for path, labels, planes in batches:
        path.write_bytes(np.concatenate([labels[:, None], planes], axis=1)
                         .astype(np.uint8).tobytes())
    return folder


def write_cifar_images(root, seed=0):
    """PNG, so that the pixels are exact."""
    from PIL import Image
    train, train_y, test, test_y = _cifar_arrays(seed)
    for split, images, labels in (('train', train, train_y), ('test', test, test_y)):
        for name in data.CIFAR_CLASSES:
            (root / split / name).mkdir(parents=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(root / split / data.CIFAR_CLASSES[label] /
                                        ('%05d.png' % i))
    return root


def _tarball(root):
    import tarfile
    folder = write_cifar_python(root / 'unpacked')
    path = root / 'cifar-10-python.tar.gz'
    with tarfile.open(path, 'w:gz') as tar:
        tar.add(folder, arcname='cifar-10-batches-py')
    return path


CIFAR_LAYOUTS = {
    'python folder': lambda root: write_cifar_python(root),
    'python folder, its parent': lambda root: write_cifar_python(root).parent,
    'python tar.gz': _tarball,
    'python tar.gz, its folder': lambda root: _tarball(root).parent,
    'binary': lambda root: write_cifar_binary(root).parent,
    'image folder': write_cifar_images,
}


@pytest.mark.parametrize('layout', sorted(CIFAR_LAYOUTS))
def test_cifar10_layouts_load_identical_arrays(tmp_path, layout):
    path = CIFAR_LAYOUTS[layout](tmp_path)
    dataset = data.load_cifar10(path)
    train, train_y, test, test_y = _cifar_arrays()
    np.testing.assert_array_equal(dataset.train.images, train)
    np.testing.assert_array_equal(dataset.train.labels, train_y)
    np.testing.assert_array_equal(dataset.test.images, test)
    np.testing.assert_array_equal(dataset.test.labels, test_y)
    assert dataset.train.images.dtype == np.uint8 and dataset.train.labels.dtype == np.int32
    reference = data.load_cifar10(write_cifar_binary(tmp_path / 'reference').parent)
    assert dataset.fingerprint() == reference.fingerprint()
    assert dataset.fingerprint() != data.load_cifar10(
        write_cifar_binary(tmp_path / 'other', seed=1).parent).fingerprint()


def test_fingerprint_follows_content_sizes_and_order():
    train, train_y, test, test_y = _cifar_arrays()
    base = data.Dataset(data.Split(train, train_y), data.Split(test, test_y), 'here')
    fp = base.fingerprint()
    assert fp['train'] == 10 and fp['test'] == 4 and len(fp['sha256']) == 16
    assert base._replace(source='elsewhere').fingerprint() == fp          # not the path
    changed = train.copy()
    changed[0, 0, 0, 0] ^= 1
    assert base._replace(train=data.Split(changed, train_y)).fingerprint() != fp
    assert base._replace(train=data.Split(train[::-1], train_y[::-1])).fingerprint() != fp


def test_damaged_cifar10_files_are_named(tmp_path):
    folder = write_cifar_python(tmp_path / 'py')
    (folder / 'data_batch_2').write_bytes(b'not a pickle')
    with pytest.raises(data.DataError, match='data_batch_2: not a batch of the CIFAR-10'):
        data.load_cifar10(folder)
    images = write_cifar_images(tmp_path / 'img')
    (images / 'train' / 'cat' / '00003.png').write_bytes(b'not a png')
    with pytest.raises(data.DataError, match='00003.png'):
        data.load_cifar10(images)
    with pytest.raises(data.DataError, match='does not exist'):
        data.load_cifar10(tmp_path / 'typo')


def _unreadable(monkeypatch, *targets):
    """Reading ``targets`` fails as a file without read permission does. Simulated: permission
    bits do not stop root, which runs these tests here."""
    real_open, real_read_bytes = open, data.Path.read_bytes

    def refuse(path):
        if Path(path).name in targets:
            raise PermissionError(13, 'Permission denied', str(path))

    def fake_open(path, *args, **kwargs):
        refuse(path)
        return real_open(path, *args, **kwargs)

    def read_bytes(path):
        refuse(path)
        return real_read_bytes(path)
    monkeypatch.setattr(data, 'open', fake_open, raising=False)    # read_idx and _sha1
    monkeypatch.setattr(data.gzip, 'open', lambda path, *a, **k: (refuse(path), gzip.GzipFile(
        fileobj=real_open(path, 'rb')))[1])
    monkeypatch.setattr(data.Path, 'read_bytes', read_bytes)


def test_unreadable_files_are_named_not_a_traceback(tmp_path, monkeypatch):
    """An unreadable gzip'd MNIST file ended in a PermissionError traceback from the checksum,
    an unreadable batch of CIFAR-10's Python release in one from read_bytes."""
    (tmp_path / 'mnist').mkdir()
    _write_mnist(tmp_path / 'mnist', gz=True)
    folder = write_cifar_python(tmp_path / 'cifar')
    _unreadable(monkeypatch, 'train-labels-idx1-ubyte.gz', 'data_batch_4', 'data_batch_2.bin')
    with pytest.raises(data.DataError, match=r'train-labels-idx1-ubyte.gz: cannot read it '
                                             r'\(Permission denied\)$'):
        data.load_mnist(tmp_path / 'mnist', download=False)     # not "replace the file"
    with pytest.raises(data.DataError, match=r'data_batch_4: cannot read it \(Permission '
                                             r'denied\)'):
        data.load_cifar10(folder)
    with pytest.raises(data.DataError, match=r'data_batch_2.bin: cannot read it \(Permission '
                                             r'denied\)'):
        data.load_cifar10(write_cifar_binary(tmp_path / 'bin'))


def test_cifar10_archives_and_gaps_say_what_to_do(tmp_path):
    """The binary release's archive was read as a Python release that "lacks" every batch; a
    file that is no archive was to be "replaced with an intact copy"; missing batches were
    listed with nothing to do."""
    import tarfile
    binary = write_cifar_binary(tmp_path / 'bin')
    archive = tmp_path / 'cifar-10-binary.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(binary, arcname='cifar-10-batches-bin')
    with pytest.raises(data.DataError, match='cifar-10-binary.tar.gz holds no batch of the '
                                             'CIFAR-10 Python release .* unpack any other'):
        data.load_cifar10(archive)
    with pytest.raises(data.DataError, match='data_batch_1.bin: cannot read it as a tar '
                                             'archive .* give the folder that holds CIFAR-10'):
        data.load_cifar10(binary / 'data_batch_1.bin')
    (binary / 'test_batch.bin').unlink()
    with pytest.raises(data.DataError, match='missing in .*: test_batch.bin; unpack the whole '
                                             'cifar-10-binary.tar.gz again'):
        data.load_cifar10(binary)
    python = write_cifar_python(tmp_path / 'py')
    (python / 'data_batch_5').unlink()
    with pytest.raises(data.DataError, match='lacks data_batch_5; unpack the whole '
                                             'cifar-10-python.tar.gz again'):
        data.load_cifar10(python)


def _flat_images(root):
    """train/*.png and test/*.png with no class folders, as Kaggle's CIFAR-10 export has them."""
    from PIL import Image
    train, _, test, _ = _cifar_arrays()
    for split, images in (('train', train), ('test', test)):
        (root / split).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(root / split / ('%d.png' % (i + 1)))
    (root / 'trainLabels.csv').write_text('id,label\n')
    return root


def test_a_flat_image_folder_is_one_error_not_a_warning_per_file(tmp_path, caplog):
    """Gluon warned "Ignoring .../train/0.png, which is not a directory." once per file (100,000
    lines for Kaggle's export) before the error that says what is wrong."""
    folder = _flat_images(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with pytest.raises(data.DataError) as refused:
            data.load_cifar10(folder)
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records] == []
    assert str(refused.value) == (
        '%s: class folders (none); CIFAR-10 needs exactly airplane, automobile, bird, cat, deer, '
        'dog, frog, horse, ship, truck; the 10 images directly in it are not read, as an '
        'image\'s class is the folder it lies in: put each in the folder of its class (e.g. %s), '
        'or give the official Python release' % (folder / 'train', folder / 'train' / 'cat' /
                                                 '0001.png'))
    (folder / 'train' / 'cat').mkdir()          # a class folder short of the ten: no note
    with pytest.raises(data.DataError, match=r'train: class folders cat; CIFAR-10 needs exactly '
                                             r'airplane, .*, truck; the 10 images'):
        data.load_cifar10(folder)


def test_files_an_image_folder_ignores_are_named_in_one_warning(tmp_path, caplog):
    """Files Gluon leaves out (beside the class folders, or not .png/.jpg/.jpeg in one) are still
    left out, named in one logged warning instead of one Python warning each."""
    folder = write_cifar_images(tmp_path)
    (folder / 'train' / 'README.txt').write_text('CIFAR-10 as PNG')
    for i in range(6):
        (folder / 'test' / 'dog' / ('notes-%d.txt' % i)).write_text('')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        dataset = data.load_cifar10(folder)
    assert [str(w.message) for w in caught] == []
    np.testing.assert_array_equal(dataset.test.images, _cifar_arrays()[2])
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ('namsg.experiments.data', 'WARNING', '%s: 1 file is not read (only .jpg, .jpeg, .png '
         'files in the class folders are images): README.txt' % (folder / 'train')),
        ('namsg.experiments.data', 'WARNING', '%s: 6 files are not read (only .jpg, .jpeg, .png '
         'files in the class folders are images): %s, ...' % (folder / 'test', ', '.join(
             'dog/notes-%d.txt' % i for i in range(5))))]


def test_a_folder_of_an_archive_says_what_to_do_with_it(tmp_path):
    """A folder holding cifar-10-binary.tar.gz had the generic "no CIFAR-10 data found in ...;
    it takes ..." where the archive given itself says to unpack it."""
    import tarfile
    binary = write_cifar_binary(tmp_path / 'unpacked')
    folder = tmp_path / 'archive'
    folder.mkdir()
    with tarfile.open(folder / 'cifar-10-binary.tar.gz', 'w:gz') as tar:
        tar.add(binary, arcname='cifar-10-batches-bin')
    only = ('of the archives only cifar-10-python.tar.gz is read as it is: unpack any other '
            '(e.g. cifar-10-binary.tar.gz) and give its folder')
    with pytest.raises(data.DataError) as refused:
        data.load_cifar10(folder)
    assert str(refused.value) == ('no CIFAR-10 data found in %s, only the archive '
                                  'cifar-10-binary.tar.gz; %s' % (folder, only))
    (folder / 'cifar-10-matlab.tar.gz').write_bytes(b'')
    with pytest.raises(data.DataError, match=re.escape(
            'only the archives cifar-10-binary.tar.gz, cifar-10-matlab.tar.gz; ' + only)):
        data.load_cifar10(folder)
    with tarfile.open(folder / 'cifar-10-binary.tar.gz') as tar:     # unpacked: it is read
        tar.extractall(folder)
    assert data.load_cifar10(folder).fingerprint() == data.load_cifar10(binary).fingerprint()


@pytest.mark.parametrize('given', ['the archive', 'its folder'])
def test_a_python_archive_without_its_batches_is_said_to_be_damaged(tmp_path, given):
    """cifar-10-python.tar.gz holding no batch (damaged, or another file under its name) was
    told that "only cifar-10-python.tar.gz is read as it is: unpack any other", which it is."""
    import tarfile
    (tmp_path / 'readme.txt').write_text('not CIFAR-10')
    archive = tmp_path / 'cifar-10-python.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(tmp_path / 'readme.txt', arcname='cifar-10-batches-py/readme.txt')
    with pytest.raises(data.DataError) as refused:
        data.load_cifar10(archive if given == 'the archive' else tmp_path)
    assert str(refused.value) == (
        '%s holds no batch of the CIFAR-10 Python release (data_batch_1, data_batch_2, '
        'data_batch_3, data_batch_4, data_batch_5, test_batch): the archive is damaged or not '
        'CIFAR-10\'s; download or copy cifar-10-python.tar.gz again' % archive)


def test_a_python_archive_short_of_a_batch_is_to_be_replaced_not_unpacked(tmp_path):
    """An archive lacking a batch was told to "unpack the whole cifar-10-python.tar.gz again"."""
    import tarfile
    folder = write_cifar_python(tmp_path / 'unpacked')
    (folder / 'data_batch_5').unlink()
    archive = tmp_path / 'cifar-10-python.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(folder, arcname='cifar-10-batches-py')
    with pytest.raises(data.DataError) as refused:
        data.load_cifar10(archive)
    assert str(refused.value) == ('the CIFAR-10 Python release in %s lacks data_batch_5; '
                                  'replace %s with an intact copy' % (archive, archive))


def _drop_last_image_of_batch_3(folder):
    """data_batch_3 of the Python release with its last image (and label) left out."""
    import pickle
    path = folder / 'data_batch_3'
    batch = pickle.loads(path.read_bytes(), encoding='bytes')
    path.write_bytes(pickle.dumps({b'data': batch[b'data'][:-1],
                                   b'labels': batch[b'labels'][:-1]}))


def _python_tarball_short(root):
    import tarfile
    folder = write_cifar_python(root / 'unpacked')
    _drop_last_image_of_batch_3(folder)
    path = root / 'cifar-10-python.tar.gz'
    with tarfile.open(path, 'w:gz') as tar:
        tar.add(folder, arcname='cifar-10-batches-py')
    return path


def _binary_short(root):
    folder = write_cifar_binary(root)
    path = folder / 'data_batch_3.bin'
    path.write_bytes(path.read_bytes()[:-(1 + 3 * 32 * 32)])     # one whole record less
    return folder


def _python_short(root):
    folder = write_cifar_python(root)
    _drop_last_image_of_batch_3(folder)
    return folder


def _images_short(root):
    folder = write_cifar_images(root)
    next((folder / 'test' / 'cat').iterdir()).unlink()
    return folder


# (set-up returning the data path, what the error must say)
SHORT_CIFAR = {
    'binary': (_binary_short, r'data_batch_3.bin holds 1 images where CIFAR-10 has 2: it is cut '
                              r'short or not CIFAR-10; unpack the whole cifar-10-binary.tar.gz '
                              r'again'),
    'python folder': (_python_short, r'data_batch_3 holds 1 images where CIFAR-10 has 2: .*; '
                                     r'unpack the whole cifar-10-python.tar.gz again'),
    'python tar.gz': (_python_tarball_short, r'cifar-10-python.tar.gz/data_batch_3 holds 1 '
                                             r'images where CIFAR-10 has 2: .*; replace '
                                             r'.*cifar-10-python.tar.gz with an intact copy'),
    'image folder': (_images_short, r'test \(its class folders\) holds 3 images where CIFAR-10 '
                                    r'has 4: .*; copy the whole split again'),
}


@pytest.mark.parametrize('layout', sorted(SHORT_CIFAR))
def test_a_cifar10_batch_cut_short_at_a_record_boundary_is_refused(tmp_path, layout):
    """data_batch_3.bin with 6,000 of its 10,000 records was read as 46,000 training images."""
    setup, message = SHORT_CIFAR[layout]
    with pytest.raises(data.DataError, match=message):
        data.load_cifar10(setup(tmp_path))


def test_cifar10_sizes_are_the_official_ones():
    assert FULL_CIFAR_SIZES == dict(train=50000, test=10000)
