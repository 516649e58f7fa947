"""The MXNet that namsg runs on. namsg depends on MXNet but never installs it: the user picks the
build that fits the hardware (``mxnet`` for CPUs, ``mxnet-cu112`` and the like for a CUDA
version), as with GluonCV and GluonNLP, and pip cannot tell that those packages are one module."""

import re

# The releases that CI runs the optimizer parity and Trainer tests on (.ci/compat.sh), and the
# one that made the committed logs (the full suite).
TESTED = ('1.5.1', '1.6.0', '1.7.0.post2', '1.8.0.post0', '1.9.1')
OLDEST, NEWEST = (1, 5), (1, 9)

INSTALL_HINT = ('install the MXNet build for your hardware: pip install mxnet (CPU) or, for a '
                'CUDA GPU, the package for your CUDA version, e.g. pip install mxnet-cu112; with '
                "'numpy<1.24' (MXNet 1.x uses aliases that numpy 1.24 removed). Tested with "
                'MXNet ' + ', '.join(TESTED))

try:
    import mxnet
except ModuleNotFoundError as error:
    if error.name != 'mxnet':      # MXNet is there but something it imports is not: say that
        raise
    raise ImportError('namsg needs MXNet 1.x, which is not installed and which namsg does not '
                      'install itself: ' + INSTALL_HINT) from None


def parse_version(text):
    """(major, minor) of a version string such as '1.8.0' or '1.7.0.post2'."""
    match = re.match(r'(\d+)\.(\d+)', text)
    if match is None:
        raise ImportError('namsg cannot read the MXNet version %r' % text)
    return int(match.group(1)), int(match.group(2))


VERSION = parse_version(mxnet.__version__)
if not OLDEST <= VERSION < (NEWEST[0] + 1, 0):
    raise ImportError('namsg supports MXNet %d.%d to %d.x; found %s at %s. To use namsg, '
                      % (OLDEST + (NEWEST[0], mxnet.__version__, mxnet.__file__)) + INSTALL_HINT)


def has_kvstore_base():
    """Whether this MXNet has ``mxnet.kvstore.KVStoreBase`` (1.7 and later), which kvstores
    written in Python, such as namsg's 'horovod' store, subclass."""
    return hasattr(mxnet.kvstore, 'KVStoreBase')
