"""The kernel cache's listing and clean-up: which libraries it holds, which of them this MXNet
uses, and removing the others.

The cache only grows: the direct call's library is built once for each set of sources,
compiler command and CPU, and where the operator stands in for it, one operator library is
built for each MXNet version. A clean-up takes the cache's lock exclusively, as a build does (see
:mod:`namsg.kernels.library`), so it never removes a library that another process is building
or loading; processes that have loaded a library keep it.
"""

import errno
import fnmatch
import re
import time
from pathlib import Path

import mxnet as mx

from . import library as _library
from .library import DIRECT, DIRECT_PREFIX, LIBRARY_PREFIX, OPERATOR


class CachedLibrary:
    """One library in the kernel cache (see :func:`cached_libraries`).

    Attributes
    ----------
    path : pathlib.Path
        The library.
    form : {'operator', 'direct'} or None
        The fused form it holds, from its name; None for a library that namsg named before it
        put the version there (an operator's).
    mxnet_version : str or None
        The MXNet version an operator's library was built for, from its name; None for the
        direct call's (every MXNet) and for a library that namsg named before it put the
        version there.
    size : int
        Bytes of the library and its checksum file.
    age : float
        Seconds since it was written.
    current : bool
        Whether it is a library that this MXNet, compiler command, CPU and these namsg
        sources use: the direct call's, and the operator's, which stands in for it where it
        fails.
    """

    def __init__(self, path, current_paths):
        self.path = path
        match = re.fullmatch(re.escape(LIBRARY_PREFIX) + r'mxnet(.+)_[0-9a-f]{16}\.so', path.name)
        self.mxnet_version = match.group(1) if match else None
        if re.fullmatch(re.escape(DIRECT_PREFIX) + r'[0-9a-f]{16}\.so', path.name):
            self.form = DIRECT
        else:
            self.form = OPERATOR if match else None
        self.size = sum(f.stat().st_size for f in (path, _library._checksum_file(path))
                        if f.exists())
        self.age = max(0.0, time.time() - path.stat().st_mtime)
        self.current = path in current_paths

    def owner(self):
        """Whether it belongs to this MXNet, in words: ``'yes'`` for the form this MXNet takes,
        ``'yes, stand-in'`` for the operator where this MXNet takes the direct call (it is kept
        for when the direct call cannot be had)."""
        if self.current:
            return 'yes' if self.form == _library._default_form() else 'yes, stand-in'
        if self.form is None:
            return 'no: built by an older namsg'
        if self.form == OPERATOR and self.mxnet_version != _library._version_tag(mx.__version__):
            return 'no: MXNet %s' % self.mxnet_version
        return 'no: other namsg sources, compiler or CPU'


def _current_libraries():
    """The libraries this process may use, by form: the direct call's where this MXNet can call
    it, and the operator's where this MXNet can have one."""
    return {form: _library.library_path(form) for form in _library.fused_forms()
            if _library._reason(form) is None}


def cache_exists(directory=None):
    """Whether a kernel cache's directory exists (a cache not made yet holds nothing).

    Parameters
    ----------
    directory : str or pathlib.Path or None, default None
        The cache; None: ``$NAMSG_KERNEL_CACHE`` (default ``~/.cache/namsg``).

    Raises
    ------
    NotADirectoryError
        The path, or a folder above it, is a file: no cache can be there. (Read as "no
        directory", this made a mistyped ``$NAMSG_KERNEL_CACHE`` look like an empty cache.)
    OSError
        The path cannot be looked at (e.g. a folder above it is not readable).
    """
    directory = Path(directory or _library._cache_dir())
    for path in (directory, *directory.parents):
        if path.exists():
            if not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, '%s is a file, so no kernel cache can '
                                         'be there' % path, str(directory))
            return path == directory
    return False


def cached_libraries(directory=None):
    """The libraries in a kernel cache.

    Parameters
    ----------
    directory : str or pathlib.Path or None, default None
        The cache; None: ``$NAMSG_KERNEL_CACHE`` (default ``~/.cache/namsg``).

    Returns
    -------
    list of CachedLibrary
        Oldest first; empty where the cache's directory does not exist yet.

    Raises
    ------
    OSError
        As :func:`cache_exists`.
    """
    directory = Path(directory or _library._cache_dir())
    if not cache_exists(directory):
        return []
    current = {directory / path.name for path in _current_libraries().values()}
    # iterdir, not glob: glob takes a directory it may not read for an empty one.
    libraries = [CachedLibrary(path, current) for path in directory.iterdir()
                 if fnmatch.fnmatchcase(path.name, LIBRARY_PREFIX + '*.so') and path.is_file()]
    return sorted(libraries, key=lambda library: -library.age)


def clean_cache(directory=None, everything=False):
    """Remove from a kernel cache what this MXNet does not use.

    That is every library but this MXNet's (see :attr:`CachedLibrary.current`: the direct
    call's and the operator's) with its checksum, the linker scripts but theirs, checksums whose
    library is gone, and the temporary files of interrupted builds. Files that are not namsg's
    are left alone.

    It waits for a build in progress there and for processes checking and mapping a library
    (the cache's lock; a warning-level line says so), and holds off new ones meanwhile; what
    was written while it waited stays: no library that another process is building or loading
    is removed. Processes that have loaded a library keep it (it is mapped); the next process
    that needs a removed one rebuilds it.

    Parameters
    ----------
    directory : str or pathlib.Path or None, default None
        The cache; None: ``$NAMSG_KERNEL_CACHE`` (default ``~/.cache/namsg``).
    everything : bool, default False
        Remove this MXNet's libraries and linker scripts too.

    Returns
    -------
    removed : list of pathlib.Path
        The files removed.
    freed : int
        Their bytes.

    Raises
    ------
    OSError
        The cache cannot be locked or written (e.g. it is read-only); or as
        :func:`cache_exists`.
    """
    directory = Path(directory or _library._cache_dir())
    if not cache_exists(directory):
        return [], 0
    keep = set()
    if not everything:
        for form, path in _current_libraries().items():
            current = directory / path.name
            keep |= {current, _library._checksum_file(current),
                     directory / _library._version_script_name(form)}
    # The files there before the lock is held, each with its inode: a file that a build
    # renamed into place while this waited is another file, and stays.
    before = _cache_files(directory, keep)
    with _library._locked(_library._open_lock(directory), exclusive=True,
                          waiting='namsg: waiting for the build or load in progress in %s'
                          % directory):
        now = _cache_files(directory, keep)
        return _library._remove(sorted([path for path, inode in now.items()
                                        if before.get(path) == inode] +
                                       _library._stale_temporaries(directory)))


def _cache_files(directory, keep):
    """{path: inode} of the libraries, checksums and linker scripts in ``directory`` but
    ``keep``."""
    found = {}
    for pattern in (LIBRARY_PREFIX + '*.so', LIBRARY_PREFIX + '*.so.sha256', 'exports-*.map'):
        for path in directory.glob(pattern):
            try:
                if path not in keep and path.is_file():
                    found[path] = path.stat().st_ino
            except FileNotFoundError:
                pass
    return found
