"""The fused ARSG update: building it, loading it, calling it, and its cache.

One update loop (``arsg_kernel.h``: weight decay, rescale, clip, m, v, vhat and the weight in
one pass over each array, all arrays of a call in one OpenMP loop) comes in two forms:

- the **direct call** (``arsg_direct.cc``), a plain shared library that needs no MXNet header,
  loaded with ctypes. It checks the arrays at once, then pushes the update to MXNet's engine
  through MXNet's C API (``MXEnginePushSyncND``), with the gradients as the arrays it reads and
  the rest as those it writes, so that the engine orders and runs it asynchronously as it does
  MXNet's own operators (see that file). It is the fused path wherever it can be had: on every
  MXNet from 1.5.1, but not on 1.5.0, whose ``MXEnginePushSyncND`` misreads its arrays, nor on
  1.5 built with MKLDNN (``mxnet-mkl``), which cannot hand over an array that an MKLDNN layer
  left in its blocked layout (1.6 reorders it): there it is the NDArray path. Its call costs
  less than the operator's, whose inputs MXNet's extension API dispatches one by one through
  the library (shape, dtype and storage callbacks): on ResNet-20's 65 weights about half the
  operator's, which is most of ARSG's step (``scripts/benchmark_optimizers.py`` times both).
- the **operator** (``arsg_update.cc``), an MXNet operator registered through MXNet's extension
  API and loaded with ``mx.library.load``: MXNet's engine runs it asynchronously, ordered by its
  inputs and outputs. It stands in for the direct call on MXNet 1.7 to 1.9 where that cannot be
  built or loaded (a warning says why). It is compiled on first use with the machine's C++
  compiler (``$CXX`` or ``g++``) against the extension API of the MXNet that is installed
  (``include/mxnet/lib_api.h`` of the mxnet package: library API version 7 on MXNet 1.7, 10 on
  1.8, 11 on 1.9; MXNet loads a library of its own version only). Version 7 is all in the
  header; 10 and 11 need its implementation, ``src/lib_api.cc``, which the 1.9 wheels ship and
  the 1.8 wheels do not: there namsg compiles its own (``extension_api.cc``). MXNet 1.5 has no
  extension API and 1.6's cannot register operators.

The direct call's library is cached under ``$NAMSG_KERNEL_CACHE`` (default
``~/.cache/namsg``) as ``libnamsg_arsg_direct_<key>.so``, the key a hash of its sources, the
compiler command and the CPU (one library for every MXNet); the operator's as
``libnamsg_arsg_mxnet<MXNet version>_<key>.so``, the key a hash of the sources, MXNet's
extension API files, the whole compiler command, the MXNet version and the CPU, and loaded
with ``mx.library.load``. Each library is written atomically with its SHA-256 beside it
(``<library>.sha256``, in ``sha256sum`` format) and checked against it before it is mapped, so
a damaged copy (an interrupted copy, a full disk) is rebuilt instead of crashing the process.
Builds and clean-ups in one cache directory take turns (an exclusive lock on its
``.build.lock``); a process holds the lock shared while it checks and maps a library, so that
no clean-up removes it meanwhile. Temporary files that a build killed half-way left behind are
removed by the next build there.

MXNet 1.7 and 1.8 close extension libraries at exit in a loop that reads freed memory
(apache/mxnet#20411), which killed some processes after their work was done (SIGABRT or
SIGSEGV, exit status lost); the library built for them ends the process with its own exit
status when MXNet closes it (see the compatibility section of ``arsg_update.cc``). The direct
call's library is not an MXNet extension: MXNet neither loads nor closes it.

``python -m namsg.kernels build`` builds the library this MXNet uses ahead of time (for
read-only or shared caches); ``python -m namsg.kernels list`` shows the cache and ``python -m
namsg.kernels clean`` removes the libraries that this MXNet does not use (``python -m
namsg.kernels --help``).

``$NAMSG_FUSED`` chooses the path for optimizers that leave ``fused=None``: ``auto`` (default:
the fused path, in either form, where it can be built, else the NDArray path with one warning),
``1`` (fused, an error if it cannot be had), ``0`` (NDArray path). Which path and form are
taken is said once per process (an INFO log line naming the library).
"""

import atexit
import contextlib
import ctypes
import fcntl
import functools
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

import mxnet as mx
from mxnet.base import _LIB, check_call

from .._mxnet import VERSION as MXNET_VERSION

__all__ = ['FusedUnavailable', 'DirectUpdateFailed', 'CachedLibrary', 'OPERATOR', 'DIRECT',
           'build', 'library_path', 'load', 'fused_switch', 'use_fused', 'fused_form',
           'arsg_update', 'operator_update', 'direct_update', 'cached_libraries', 'clean_cache',
           'entry_points']

# The fused forms (see the module's docstring).
OPERATOR = 'operator'
DIRECT = 'direct'
# The update loop, which both forms' sources include.
KERNEL_HEADER = Path(__file__).with_name('arsg_kernel.h')
SOURCE = Path(__file__).with_name('arsg_update.cc')
DIRECT_SOURCE = Path(__file__).with_name('arsg_direct.cc')
# What the direct-call library exports, and the version of that interface it must report
# (NAMSG_ARSG_DIRECT_ABI in arsg_direct.cc).
DIRECT_ENTRY_POINTS = ('namsg_arsg_direct_abi', 'namsg_arsg_direct_update')
DIRECT_ABI = 4
# MXNDArrayGetData reorders an array in an MKLDNN layout from MXNet 1.6 on (1.5's fails on it).
DIRECT_MKLDNN_MXNET = (1, 6)
# namsg's implementation of the library side of extension API versions 10 and 11, compiled
# where the mxnet package lacks src/lib_api.cc (the 1.8 wheels).
EXTENSION_API = Path(__file__).with_name('extension_api.cc')
OP_NAME = '_namsg_arsg_update'
# The extension API versions (MX_LIBRARY_VERSION) that the operator is written for: 7 (MXNet
# 1.7, the first that registers operators from a library, with mutable inputs), 10 (1.8), 11
# (1.9). arsg_update.cc's compatibility section holds what differs between them.
API_VERSIONS = (7, 10, 11)
FUSED_MXNET = (1, 7)
# -fno-math-errno and -fno-trapping-math let GCC vectorise the update loop (sqrt, and the
# selects of min/max, which it will not if-convert while FP operations may trap); neither
# changes a result, and nothing here reads errno or FP exception flags. The library exports
# MXNet's entry points and nothing else (a version script, see _version_script); -Bsymbolic
# binds those to the library's own definitions too. -z defs makes a function that lib_api.h
# declares and no source defines a link error, not a failure when MXNet loads the library.
FLAGS = ['-O3', '-fno-math-errno', '-fno-trapping-math', '-std=c++14', '-fPIC', '-shared',
         '-fopenmp', '-Wall', '-Wl,-Bsymbolic', '-Wl,-z,defs']
# The library is built on the machine that runs it, so it may use all of that CPU's vector
# units (AVX-512 here, where the default is SSE2). -ffp-contract=off keeps
# a*b+c as two roundings, as in the NDArray path, instead of fusing it into one FMA. The
# cache key includes the CPU, so a home directory shared by unlike machines stays correct;
# a compiler that rejects these flags gets a portable build.
ARCH_FLAGS = ['-march=native', '-ffp-contract=off']
SWITCH = 'NAMSG_FUSED'
CACHE_ENV = 'NAMSG_KERNEL_CACHE'
LIBRARY_PREFIX = 'libnamsg_arsg_'
DIRECT_PREFIX = LIBRARY_PREFIX + 'direct_'
# What a build killed half-way leaves behind (mkstemp's names, see _compile_into and
# _write_version_script).
TEMPORARY_PATTERNS = ('*.so.tmp', '*.so.tmp.sha256', '*.map.tmp')
LOCK_NAME = '.build.lock'

logger = logging.getLogger(__name__)

_lock = threading.Lock()
# loaded: a fused form is ready (form: which, path: its library); error: why none can be had.
_state = {'loaded': False, 'error': None, 'warned': False, 'form': None, 'path': None}
# The forms mapped in this process: the direct call's _DirectLibrary, the operator's path.
_mapped = {}


class FusedUnavailable(RuntimeError):
    """The fused update was required (NAMSG_FUSED=1 or fused=True) but cannot be built."""


def _mxnet_dir():
    return Path(mx.__file__).resolve().parent


def _cache_dir():
    # Absolute, as mx.library.load requires; an empty variable counts as unset (a relative or
    # empty path put the cache in the working directory, where loading then failed).
    return Path(os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'namsg').absolute()


def _compiler():
    return os.environ.get('CXX', 'g++')


def _header():
    return _mxnet_dir() / 'include' / 'mxnet' / 'lib_api.h'


def _lib_api_source():
    return _mxnet_dir() / 'src' / 'lib_api.cc'


@functools.lru_cache(maxsize=None)
def api_version():
    """MX_LIBRARY_VERSION of this MXNet's ``lib_api.h``, or None (no header, or MXNet 1.6's,
    which defines no library API version: it only calls a library's ``initialize``)."""
    try:
        match = re.search(r'^\s*#define\s+MX_LIBRARY_VERSION\s+(\d+)', _header().read_text(),
                          re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def unavailable_reason():
    """Why the fused extension operator cannot be had with this MXNet, or None. (A compiler is
    needed only where no intact library is cached: see build. The direct call may still be had:
    see direct_unavailable_reason.)"""
    if MXNET_VERSION < FUSED_MXNET:
        # 1.5 has no extension API; 1.6's loads a library and calls its initialize(), nothing
        # more: operators from a library came with 1.7's.
        return ('the fused ARSG operator needs MXNet %d.%d or later (found %s), the first whose '
                'extension API registers operators from a library' % (FUSED_MXNET +
                                                                     (mx.__version__,)))
    if not _header().is_file():
        return ('the fused ARSG operator compiles against %s, which this mxnet package lacks'
                % _header())
    if api_version() not in API_VERSIONS:
        return ('the fused ARSG operator is written for the extension API versions %s of MXNet '
                '1.7 to 1.9; %s is version %s' % ('/'.join(map(str, API_VERSIONS)), _header(),
                                                  api_version()))
    return None


def direct_unavailable_reason():
    """Why the fused direct call cannot be had with this MXNet, or None. (It needs a compiler
    only where no intact library is cached, as the operator does.)"""
    if mx.__version__ == '1.5.0':
        return ('the fused ARSG update cannot be pushed to the engine of MXNet 1.5.0, whose '
                'MXEnginePushSyncND misreads its arrays (apache/mxnet#15774, fixed in 1.5.1): '
                'upgrade to MXNet 1.5.1 or later')
    if MXNET_VERSION < DIRECT_MKLDNN_MXNET and _mkldnn():
        return ('the fused ARSG update cannot be called directly on MXNet %s built with MKLDNN: '
                'its MXNDArrayGetData refuses an array that an MKLDNN layer left in its own '
                'layout (MXNet 1.6 reorders it)' % mx.__version__)
    missing = [name for field, name in _MXNET_API.items()
               if field != 'get_shape64' and not hasattr(_LIB, name)]
    if missing:
        return ('the fused ARSG update calls MXNet C API functions that this MXNet lacks: %s'
                % ', '.join(missing))
    return None


def _reason(form):
    return unavailable_reason() if form == OPERATOR else direct_unavailable_reason()


def fused_forms():
    """The fused forms this MXNet may take, best first: the direct call (the cheaper call), then
    the operator from MXNet 1.7 on."""
    return (DIRECT, OPERATOR) if MXNET_VERSION >= FUSED_MXNET else (DIRECT,)


def _default_form():
    """The form whose library this MXNet uses unless it fails to build or load."""
    return next((form for form in fused_forms() if _reason(form) is None), DIRECT)


def _api_sources():
    """What implements the extension API's library side: nothing for version 7 (all in the
    header), else the package's src/lib_api.cc or, where it lacks one, namsg's."""
    if api_version() < 10:
        return []
    return [_lib_api_source() if _lib_api_source().is_file() else EXTENSION_API]


def entry_points(header_text=None):
    """The functions that MXNet's library loader looks up (dlsym): what the library exports.

    They are the names of the last ``extern "C"`` block of ``lib_api.h``, where 1.8 and 1.9
    declare them and 1.7 defines them (names called inside those bodies are not counted). 1.7
    has 27, 1.8 adds ``_msgSize`` and ``_msgGet``, 1.9 ``_opCallDestroyOpState``.

    Parameters
    ----------
    header_text : str or None, default None
        The text of a ``lib_api.h``; None reads this MXNet's.

    Returns
    -------
    tuple of str
        The names, in the header's order.

    Raises
    ------
    OSError
        ``header_text`` is None and this MXNet has no ``include/mxnet/lib_api.h``.
    ValueError
        The text has no ``extern "C" {`` block.
    """
    text = _header().read_text() if header_text is None else header_text
    block = text[text.rindex('extern "C" {') + len('extern "C" {'):]
    block = re.sub(r'/\*.*?\*/|//[^\n]*', '', block, flags=re.S)
    block = re.sub(r'^\s*#[^\n]*', '', block, flags=re.M)
    # Keep what is at the block's own level: function bodies (version 7) call other names.
    outer, depth = [], 0
    for char in block:
        if char == '}':
            depth -= 1
            if depth < 0:          # the end of the extern "C" block
                break
        elif char == '{':
            depth += 1
        elif depth == 0:
            outer.append(char)
    names = re.findall(r'\b(_[A-Za-z]\w*|initialize)\s*\(', ''.join(outer))
    return tuple(dict.fromkeys(names))


def _exports(form):
    return entry_points() if form == OPERATOR else DIRECT_ENTRY_POINTS


def _version_script(form=OPERATOR):
    """The linker's version script. The direct call's library exports its two functions; the
    operator's: MXNet's entry points are global, every other symbol --
    lib_api's mxnet::ext classes and the C++ templates that the sources instantiate -- is local,
    so the library's calls stay inside it: otherwise the dynamic linker binds them to the first
    copy in the process's global scope, e.g. libmxnet.so's (built with the old std::string),
    which importing horovod.mxnet makes global (RTLD_GLOBAL), or another extension's, and the
    update crashes. The entry points differ between API versions, hence read from the header."""
    return '{\n  global:\n    %s;\n  local: *;\n};\n' % ';\n    '.join(_exports(form))


def _version_script_name(form=OPERATOR):
    # Named by its content, so the name (in the compiler command) is in the cache key.
    return 'exports-%s.map' % hashlib.sha256(_version_script(form).encode()).hexdigest()[:16]


def _build_command(compiler, output, arch_flags, form=OPERATOR):
    """The compiler's argument list (nothing is written: the version script it names, beside
    ``output``, is written by _write_version_script just before compiling). The sources find
    arsg_kernel.h beside them; the direct call's needs nothing of MXNet's."""
    script = Path(output).parent / _version_script_name(form)
    command = [compiler] + FLAGS + ['-Wl,--version-script=' + str(script)] + arch_flags
    if form == DIRECT:
        return command + [str(DIRECT_SOURCE), '-o', str(output)]
    mxnet_dir = _mxnet_dir()
    return (command + ['-I', str(mxnet_dir / 'include' / 'mxnet'),
                       '-I', str(mxnet_dir / 'include'), str(SOURCE)] +
            [str(source) for source in _api_sources()] + ['-o', str(output)])


def _write_version_script(directory, form=OPERATOR):
    """The linker's version script in ``directory`` (the cache), written once and atomically,
    readable by every user of a shared cache."""
    script = Path(directory) / _version_script_name(form)
    if not script.is_file():
        fd, tmp = tempfile.mkstemp(dir=directory, suffix='.map.tmp')
        with os.fdopen(fd, 'w') as f:
            f.write(_version_script(form))
        os.chmod(tmp, 0o644)
        os.replace(tmp, script)


def _cpu_identity():
    """The CPU's model and instruction-set flags (what -march=native compiles for)."""
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(('model name', 'flags',
                                                                   'Features', 'CPU part'))]
        return ''.join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _version_tag(version):
    """MXNet's version as it appears in a library's name."""
    return re.sub(r'[^A-Za-z0-9.+-]', '_', version)


def library_path(form=None):
    """Where the built library of ``form`` is cached: the operator's for these sources, MXNet's
    extension API files, this compiler command (every flag), MXNet version and CPU (it needs an
    MXNet that can have the operator, see unavailable_reason); the direct call's for its
    sources, this compiler command and CPU, whatever the MXNet. ``form`` None: the form this
    MXNet uses (the direct call where it can have it)."""
    form = form or _default_form()
    if form == DIRECT:
        parts = [DIRECT_SOURCE.read_bytes(), KERNEL_HEADER.read_bytes()]
    else:
        parts = ([SOURCE.read_bytes(), KERNEL_HEADER.read_bytes(), _header().read_bytes()] +
                 [source.read_bytes() for source in _api_sources()] + [mx.__version__.encode()])
    digest = hashlib.sha256()
    for part in parts + ['\0'.join(_build_command(_compiler(), 'OUTPUT', ARCH_FLAGS,
                                                    form)).encode(),
                         _cpu_identity().encode()]:
        digest.update(part)
        digest.update(b'\0')
    if form == DIRECT:
        return _cache_dir() / ('%s%s.so' % (DIRECT_PREFIX, digest.hexdigest()[:16]))
    return _cache_dir() / ('%smxnet%s_%s.so' % (LIBRARY_PREFIX, _version_tag(mx.__version__),
                                                digest.hexdigest()[:16]))


def _checksum_file(path):
    return path.with_name(path.name + '.sha256')


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()     # a few hundred kB


def is_intact(path):
    """Whether the library at ``path`` is whole: its SHA-256 is the one written beside it when
    it was built. MXNet maps the file into memory, and a truncated one kills the process with
    SIGBUS, so this is checked before every load."""
    try:
        recorded = _checksum_file(path).read_text().split()
        return bool(recorded) and _sha256(path) == recorded[0]
    except OSError:
        return False


def _write_durably(path, text=None):
    """Flush ``path`` (writing ``text`` first if given) to the disk before it is renamed into
    place, so that a crash leaves the old file or the new one, never a part of it."""
    with open(path, 'w' if text is not None else 'rb+') as f:
        if text is not None:
            f.write(text)
            f.flush()
        os.fsync(f.fileno())


def _unwritable(directory, error):
    """The error for a cache directory that cannot be written. Its advice is not the command
    that just failed: `python -m namsg.kernels build` fails on it the same way."""
    return FusedUnavailable(
        'cannot write the fused-operator library to %s (%s): set $%s to a writable directory, '
        'or build the library ahead of time where that directory is writable (as its owner, '
        'or on a machine that mounts it read-write) with `python -m namsg.kernels build` and '
        'the same $%s' % (directory, error, CACHE_ENV, CACHE_ENV))


def _open_lock(directory):
    """A descriptor of the cache directory's lock file, made if missing (OSError if it cannot
    be). Read-only suffices for flock, so that every user of a shared cache can lock it."""
    return os.open(os.path.join(directory, LOCK_NAME), os.O_RDONLY | os.O_CREAT, 0o644)


@contextlib.contextmanager
def _locked(fd, exclusive, waiting=None):
    """Hold the cache's lock on ``fd`` and close it after: exclusive to build or clean, shared
    to check and map a library, so that no clean-up removes it meanwhile. ``fd`` None: no lock
    (a read-only cache without a lock file, where nothing builds or cleans). ``waiting``: a
    message to log if another process holds the lock."""
    try:
        if fd is not None:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    logger.warning(waiting)
                fcntl.flock(fd, mode)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _stale_temporaries(directory):
    """Temporary files in ``directory`` that builds killed half-way left behind. Called with
    the exclusive lock held: every temporary file is made by a holder of that lock and renamed
    or removed before it lets go, so any there now belongs to a build that died."""
    found = set()
    for pattern in TEMPORARY_PATTERNS:
        found.update(Path(directory).glob(pattern))
    return sorted(found)


def _remove(paths):
    """Remove ``paths``: (those removed, the bytes freed); one already gone is skipped."""
    removed, freed = [], 0
    for path in paths:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
        freed += size
    return removed, freed


def build(path=None, force=False, form=None):
    """Compile a fused form's library unless an intact one is there.

    Concurrent builders in one directory wait for each other (its lock); the one that builds
    first removes the temporary files that builds killed half-way left there, and logs a
    warning-level line saying how many. A build logs one warning-level line with the time it
    took (some seconds).

    Parameters
    ----------
    path : str or pathlib.Path or None, default None
        Where to write the library; None: :func:`library_path` in ``$NAMSG_KERNEL_CACHE``.
    force : bool, default False
        Rebuild even if an intact library is there.
    form : {'operator', 'direct'} or None, default None
        Which fused form (``'operator'``, ``'direct'``); None: the one this MXNet uses
        (the operator from MXNet 1.7 on where it can have one, else the direct call).

    Returns
    -------
    pathlib.Path
        The library's path.

    Raises
    ------
    FusedUnavailable
        This MXNet or machine cannot build it (the reason says which: for the operator MXNet
        before 1.7, no ``lib_api.h`` or an unknown extension API version; for the direct call
        MXNet 1.5 with MKLDNN; no compiler), the compiler failed, or the directory is not
        writable (the message says to set ``$NAMSG_KERNEL_CACHE`` to a writable directory or to
        build where that one is writable).
    """
    form = form or _default_form()
    reason = _reason(form)
    if reason:
        raise FusedUnavailable(reason)
    path = Path(path or library_path(form))
    if not force and is_intact(path):
        return path
    # Checked only now: machines that run a library built ahead of time need no compiler.
    if shutil.which(_compiler()) is None:
        raise FusedUnavailable('the fused ARSG operator needs a C++ compiler to build and %s is '
                               'not on PATH (install g++ or set $CXX)' % _compiler())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _open_lock(path.parent)
    except OSError as e:
        raise _unwritable(path.parent, e) from e
    with _locked(lock, exclusive=True):
        if not force and is_intact(path):       # another process built it meanwhile
            return path
        leftovers, _ = _remove(_stale_temporaries(path.parent))
        if leftovers:
            logger.warning('namsg: removed %d temporary files that an interrupted build left in '
                           '%s', len(leftovers), path.parent)
        damaged = path.exists() and not force
        start = time.monotonic()
        _compile_into(path, form)
        logger.warning('namsg: %s the fused ARSG %s in %.1f s (once for this %s and CPU): %s',
                       'rebuilt a damaged copy of' if damaged else 'built',
                       'operator' if form == OPERATOR else 'direct-call library',
                       time.monotonic() - start,
                       'MXNet, compiler command' if form == OPERATOR else 'compiler command',
                       path)
    return path


def _compile_into(path, form=OPERATOR):
    """Compile into a temporary file beside ``path``, then rename it and its checksum into
    place, the library first: a reader that finds the old checksum rebuilds under the lock."""
    compiler = _compiler()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.so.tmp')
    except OSError as e:
        raise _unwritable(path.parent, e) from e
    os.close(fd)
    tmp_sum = tmp + '.sha256'
    try:
        _write_version_script(path.parent, form)
        for arch_flags in (ARCH_FLAGS, []):
            result = subprocess.run(_build_command(compiler, tmp, arch_flags, form),
                                    capture_output=True, text=True)
            if result.returncode == 0:
                break
        if result.returncode != 0:
            source = SOURCE if form == OPERATOR else DIRECT_SOURCE
            raise FusedUnavailable('compiling %s failed:\n%s' % (source.name,
                                                                 result.stderr[-3000:]))
        os.chmod(tmp, 0o755)        # mkstemp's 0600 would hide it from a shared cache's users
        _write_durably(tmp)
        _write_durably(tmp_sum, '%s  %s\n' % (_sha256(tmp), path.name))
        os.replace(tmp, path)
        os.replace(tmp_sum, _checksum_file(path))
    except OSError as e:
        raise FusedUnavailable('writing %s failed: %s' % (path, e)) from e
    finally:
        for leftover in (tmp, tmp_sum):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _build_and_map(form=OPERATOR):
    """Build the library of ``form`` if needed and load it (the operator into MXNet, the direct
    call with ctypes); its path."""
    reason = _reason(form)
    if reason:
        raise FusedUnavailable(reason)
    path = library_path(form)
    for _ in range(2):
        build(path, form=form)
        # A clean-up between the build and the lock may have removed it: then build again.
        try:
            lock = _open_lock(path.parent)
        except OSError:
            lock = None
        with _locked(lock, exclusive=False):
            if is_intact(path):
                if form == OPERATOR:
                    from mxnet import library      # MXNet 1.5 has none
                    library.load(str(path), verbose=False)
                    _mapped[OPERATOR] = path
                else:
                    _mapped[DIRECT] = _DirectLibrary(path)
                return path
    raise FusedUnavailable('%s was removed twice between its build and its loading (is a '
                           '`python -m namsg.kernels clean --all` running in a loop?)' % path)


def load():
    """Build (if needed) and load a fused form once per process: the direct call where it can
    be had, else the operator into MXNet (see ``fused_forms()``). True on success; the reason
    for a failure is kept for :func:`use_fused`. The form taken is said once: an INFO log line,
    or a warning-level one when the operator stands in for a direct call that failed."""
    with _lock:
        if _state['loaded'] or _state['error'] is not None:
            return _state['loaded']
        reasons = []
        for form in fused_forms():
            try:
                path = _build_and_map(form)
            except (FusedUnavailable, OSError, mx.base.MXNetError) as e:
                reasons.append(str(e))
                continue
            _state.update(loaded=True, form=form, path=path)
            taken = 'namsg: ARSG takes the fused %s path (MXNet %s, %s)' % (
                'operator' if form == OPERATOR else 'direct-call', mx.__version__, path)
            if reasons:
                logger.warning('%s: the fused direct call is not available: %s', taken,
                               reasons[0])
            else:
                logger.info('%s', taken)
            return True
        _state['error'] = '; '.join(dict.fromkeys(reasons))    # each reason once
        return False


def fused_form():
    """The fused form this process takes, ``'operator'`` or ``'direct'``, loading it if
    needed; None where neither can be had (:func:`use_fused` says why)."""
    return _state.get('form') if load() else None


# -- the cache: what is in it, and removing what this MXNet does not use ------------------------

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
        self.size = sum(f.stat().st_size for f in (path, _checksum_file(path)) if f.exists())
        self.age = max(0.0, time.time() - path.stat().st_mtime)
        self.current = path in current_paths

    def owner(self):
        """Whether it belongs to this MXNet, in words."""
        if self.current:
            return 'yes'
        if self.form is None:
            return 'no: built by an older namsg'
        if self.form == OPERATOR and self.mxnet_version != _version_tag(mx.__version__):
            return 'no: MXNet %s' % self.mxnet_version
        return 'no: other namsg sources, compiler or CPU'


def _current_libraries():
    """The libraries this process may use, by form: the operator's where this MXNet can have
    one, and the direct call's where this MXNet can call it."""
    return {form: library_path(form) for form in fused_forms() if _reason(form) is None}


def cached_libraries(directory=None):
    """The libraries in a kernel cache.

    Parameters
    ----------
    directory : str or pathlib.Path or None, default None
        The cache; None: ``$NAMSG_KERNEL_CACHE`` (default ``~/.cache/namsg``).

    Returns
    -------
    list of CachedLibrary
        Oldest first.
    """
    directory = Path(directory or _cache_dir())
    current = {directory / path.name for path in _current_libraries().values()}
    libraries = [CachedLibrary(path, current)
                 for path in directory.glob(LIBRARY_PREFIX + '*.so') if path.is_file()]
    return sorted(libraries, key=lambda library: -library.age)


def clean_cache(directory=None, everything=False):
    """Remove from a kernel cache what this MXNet does not use.

    That is every library but this MXNet's (see :attr:`CachedLibrary.current`: the operator's
    and the direct call's) with its checksum, the linker scripts but theirs, checksums whose
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
        The cache cannot be locked or written (e.g. it is read-only).
    """
    directory = Path(directory or _cache_dir())
    if not directory.is_dir():
        return [], 0
    keep = set()
    if not everything:
        for form, path in _current_libraries().items():
            current = directory / path.name
            keep |= {current, _checksum_file(current), directory / _version_script_name(form)}
    # The files there before the lock is held, each with its inode: a file that a build
    # renamed into place while this waited is another file, and stays.
    before = _cache_files(directory, keep)
    with _locked(_open_lock(directory), exclusive=True,
                 waiting='namsg: waiting for the build or load in progress in %s' % directory):
        now = _cache_files(directory, keep)
        return _remove(sorted([path for path, inode in now.items()
                               if before.get(path) == inode] + _stale_temporaries(directory)))


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


def fused_switch():
    """``$NAMSG_FUSED`` as the optimizers read it: ``'auto'`` (unset or empty), ``'0'`` or
    ``'1'``, case and surrounding spaces ignored. Raises ValueError naming the variable for any
    other value."""
    value = os.environ.get(SWITCH, 'auto').strip().lower() or 'auto'
    if value not in ('auto', '0', '1'):
        raise ValueError('%s=%r: set it to auto, 0 or 1' % (SWITCH, value))
    return value


def use_fused(requested=None):
    """Whether an optimizer with ``fused=requested`` takes the fused path: True/False force it
    (True raises FusedUnavailable if it cannot be had), None follows $NAMSG_FUSED."""
    if requested is None:
        switch = fused_switch()
        if switch == '0':
            return False
        requested = True if switch == '1' else None
    if requested is False:
        return False
    if load():
        return True
    if requested:
        raise FusedUnavailable('the fused ARSG operator is not available: %s' % _state['error'])
    if not _state['warned']:
        _state['warned'] = True
        warnings.warn('namsg: %s; using the NDArray path (slower, same results). Set %s=0 '
                      'to silence this.' % (_state['error'], SWITCH))
    return False


@functools.lru_cache(maxsize=None)
def _mkldnn():
    """Whether MXNet runs MKLDNN (oneDNN) kernels. ``import mxnet`` of 1.5 does not import
    mxnet.runtime, hence the explicit import."""
    from mxnet import runtime
    return runtime.Features().is_enabled('MKLDNN')


def _join(values):
    """Comma-separated; one value when all are equal (the operator broadcasts it), which keeps
    the attribute strings short in the common case."""
    first = values[0]
    if all(v == first for v in values):
        return repr(float(first))
    return ','.join(repr(float(v)) for v in values)


def _wait_for_layouts():
    """Wait for MXNet's engine so that no array is, or is about to be, left in an MKLDNN
    (oneDNN) blocked layout; then MXNDArrayGetData reorders one that is back to the default
    layout, at once. (Both fused forms take such arrays this way: inside the engine's run of the
    direct call, MXNDArrayGetData would wait for the engine to reorder such an array, that is
    for the call itself.) An MKLDNN convolution or dense layer run for inference reorders its
    weight into such a layout in place, and MXNet 1.9 hands an in-place extension operator that
    array as it is, which fails ("We can't generate TBlob for MKLDNN data"); 1.7 and 1.8 hand it
    the same way as an output, and as an input a reordered temporary copy, in which an update of
    a mutable input would be lost (the states are never in such a layout: only this operator
    and the NDArray path touch them).

    MKLDNN's inference convolution does not reorder at once: while it runs (a read of the
    weight) it pushes the reorder as a new write. So wait for every pending read and write (the
    convolution has then run and pushed its reorder), then for that reorder, then reorder back;
    nothing else can be pushed before the update, from this same thread. Waiting for writes
    only lost the race when the convolution ran between that wait and the update. One wait for
    the whole engine (a reorder pushed while it waits is counted too) costs one round trip; a
    wait per array cost one each, 5 ms for ResNet-20's 65 weights, twice adam's whole step.
    After it each array's own wait returns at once.
    """
    mx.nd.waitall()


def _default_layout_data(arrays):
    """The arrays' data pointers, none left in an MKLDNN blocked layout (see
    ``_wait_for_layouts``)."""
    _wait_for_layouts()
    pointers = []
    for array in arrays:
        array.wait_to_read()
        pointer = ctypes.c_void_p()
        check_call(_LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
        pointers.append(pointer.value)
    return pointers


def arsg_update(weights, grads, states, masters, lrs, wds, denominator_scales, *, beta1, beta2,
                epsilon, mu, rescale_grad, clip_gradient, lower_bound, upper_bound,
                preconditioner_index):
    """One fused ARSG step for all ``weights``, in place, in the form this process took
    (:func:`fused_form`: the extension operator or the direct call, each pushed to MXNet's
    engine, which runs it asynchronously in the order of its arrays). Both compute the same
    values.

    Parameters
    ----------
    weights, grads : list of NDArray
        Dense arrays on one CPU context, all weights of one dtype (float16, float32 or
        float64), each gradient of its weight's shape and dtype.
    states : list of tuple of NDArray
        Weight j's states, ``(m, v, vhat)``, ``(m, v)`` or ``(m,)`` by the preconditioner,
        float32 for float16 weights, else of the weight's dtype; updated in place.
    masters : list of NDArray or None
        float32 master copies of the weights (multi_precision), updated in place, or None.
    lrs, wds, denominator_scales : list of float
        Each weight's step size, weight decay, and ``1 / sqrt(1 - beta2^t)`` (read by the
        'adam' preconditioner only).
    beta1, beta2, epsilon, mu, rescale_grad : float
        As :class:`namsg.ARSG`'s.
    clip_gradient : float or None
        The clipping threshold; None or 0: none.
    lower_bound, upper_bound : float or None
        The projection's bounds; None: unbounded.
    preconditioner_index : int
        The index of the preconditioner in ``namsg.arsg.PRECONDITIONERS`` (0 'amsgrad', 1
        'adam', 2 'none').

    Raises
    ------
    FusedUnavailable
        No fused form can be had (the reason says why).
    ValueError
        Direct call: arrays that do not fit together (counts, dtypes, sizes, sparse or GPU
        arrays), before anything is pushed.
    mxnet.base.MXNetError
        MXNet refused a call (e.g. the operator's checks).
    DirectUpdateFailed
        Direct call: an earlier call could not run in MXNet's engine (it wrote nothing).
    """
    if not load():
        raise FusedUnavailable('the fused ARSG operator is not available: %s' % _state['error'])
    update = direct_update if _state.get('form') == DIRECT else operator_update
    update(weights, grads, states, masters, lrs, wds, denominator_scales, beta1=beta1,
           beta2=beta2, epsilon=epsilon, mu=mu, rescale_grad=rescale_grad,
           clip_gradient=clip_gradient, lower_bound=lower_bound, upper_bound=upper_bound,
           preconditioner_index=preconditioner_index)


def operator_update(weights, grads, states, masters, lrs, wds, denominator_scales, *, beta1,
                    beta2, epsilon, mu, rescale_grad, clip_gradient, lower_bound, upper_bound,
                    preconditioner_index):
    """:func:`arsg_update` through the extension operator (loaded by :func:`load`), pushed to
    MXNet's engine."""
    if _mkldnn():
        _default_layout_data(weights)
    inputs = []
    for j, (w, g, state) in enumerate(zip(weights, grads, states)):
        inputs += [w, g] + list(state)
        if masters is not None:
            inputs.append(masters[j])
    attrs = dict(num_weights=len(weights), num_states=len(states[0]),
                 multi_precision=int(masters is not None),
                 preconditioner=preconditioner_index, lrs=_join(lrs), wds=_join(wds),
                 denominator_scales=_join(denominator_scales), beta1=repr(beta1),
                 beta2=repr(beta2), epsilon=repr(epsilon), mu=repr(mu),
                 rescale_grad=repr(float(rescale_grad)),
                 clip_gradient=repr(float(clip_gradient) if clip_gradient else -1.0))
    if lower_bound is not None:
        attrs['lower_bound'] = repr(lower_bound)
    if upper_bound is not None:
        attrs['upper_bound'] = repr(upper_bound)
    getattr(mx.nd._internal, OP_NAME)(*inputs, out=list(weights), **attrs)


# -- the direct call -----------------------------------------------------------------------------

# The MXNet C API functions that the direct-call library calls (NamsgMXNetApi in arsg_direct.cc,
# in its order), and the names MXNet exports them by.
_MXNET_API = {'get_storage_type': 'MXNDArrayGetStorageType',
              'get_context': 'MXNDArrayGetContext', 'get_dtype': 'MXNDArrayGetDType',
              'get_shape': 'MXNDArrayGetShapeEx', 'get_shape64': 'MXNDArrayGetShapeEx64',
              'get_data': 'MXNDArrayGetData', 'last_error': 'MXGetLastError',
              'push_sync_nd': 'MXEnginePushSyncND'}


class _MXNetApi(ctypes.Structure):
    _fields_ = [(field, ctypes.c_void_p) for field in _MXNET_API]


class _Hyper(ctypes.Structure):
    """NamsgArsgHyper in arsg_direct.cc."""
    _fields_ = ([(name, ctypes.c_int) for name in ('preconditioner', 'multi_precision',
                                                    'has_lower', 'has_upper')] +
                [(name, ctypes.c_double) for name in ('beta1', 'beta2', 'epsilon', 'mu',
                                                       'rescale_grad', 'clip_gradient',
                                                       'lower_bound', 'upper_bound')])


class _CallStatus(ctypes.Structure):
    """NamsgCallStatus in arsg_direct.cc: one pushed call, as MXNet's engine runs it."""
    _fields_ = [('ran', ctypes.c_int), ('released', ctypes.c_int),
                ('message', ctypes.c_char * 512)]


def _int64_shapes():
    """Whether this MXNet was built with large-tensor support, where its Python reads shapes
    with MXNDArrayGetShapeEx64 (MXNet 1.5 has neither)."""
    enabled = getattr(mx.ndarray.ndarray, '_int64_enabled', None)
    return bool(enabled and enabled())


class DirectUpdateFailed(mx.base.MXNetError):
    """A direct call that MXNet's engine ran could not update its arrays (it wrote nothing).
    Raised by the next update through the direct call, or logged at exit."""


class _DirectLibrary:
    """The direct-call library, loaded with ctypes, the MXNet functions it is handed, and the
    calls pushed to MXNet's engine that it has not released yet (their arrays and statuses are
    kept alive until then: the engine reads them later, from its own threads)."""

    def __init__(self, path):
        library = ctypes.CDLL(str(path))
        abi = library.namsg_arsg_direct_abi()
        if abi != DIRECT_ABI:
            raise FusedUnavailable('%s has interface version %d, this namsg needs %d: rebuild it '
                                   'with `python -m namsg.kernels build --force`'
                                   % (path, abi, DIRECT_ABI))
        self.update = library.namsg_arsg_direct_update
        self.update.restype = ctypes.c_int
        self.update.argtypes = [ctypes.POINTER(_MXNetApi), ctypes.c_int,
                                ctypes.POINTER(ctypes.c_void_p)] + \
            [ctypes.POINTER(ctypes.c_double)] * 3 + [
                ctypes.c_int, ctypes.POINTER(_Hyper),
                ctypes.POINTER(_CallStatus), ctypes.c_char_p, ctypes.c_int]
        functions = {field: ctypes.cast(getattr(_LIB, name), ctypes.c_void_p)
                     for field, name in _MXNET_API.items()
                     if field != 'get_shape64' or _int64_shapes()}
        self.api = _MXNetApi(**functions)
        self.library = library        # kept mapped while this object lives
        self.pending = []             # (status, arrays) of calls not released yet
        self.pending_lock = threading.Lock()

    def push(self, count, arrays, lrs, wds, scales, hyper):
        """Check and push one call (see namsg_arsg_direct_update); raise a failure of an
        earlier call first. Where MXNet runs MKLDNN, the library takes the arrays' data now,
        after a wait for the engine (see arsg_direct.cc)."""
        self.raise_failures()
        status = _CallStatus()
        message = ctypes.create_string_buffer(512)
        values = ctypes.c_double * count
        pointers = (ctypes.c_void_p * len(arrays))
        take_data = _mkldnn()
        if take_data:
            _wait_for_layouts()
        result = self.update(ctypes.byref(self.api), count,
                             pointers(*[a.handle for a in arrays]), values(*lrs),
                             values(*wds), values(*scales), take_data, ctypes.byref(hyper),
                             ctypes.byref(status), message, len(message))
        if result > 0:
            raise ValueError('arsg_update: %s' % message.value.decode())
        if result == 0 or not status.released:
            # Pushed: the engine releases it. Refused by MXNet: the engine may still hold it
            # (then its arrays are never read, but its status is written).
            with self.pending_lock:
                self.pending.append((status, arrays if result == 0 else ()))
        if result < 0:
            raise mx.base.MXNetError(message.value.decode(errors='replace'))

    def raise_failures(self):
        """Raise DirectUpdateFailed for the calls that failed in the engine since the last
        check; forget the calls that the engine released. (The engine writes a call's outcome
        as it runs it, and releases it a moment later, after its waiters have returned.)"""
        failed = []
        with self.pending_lock:
            kept = []
            for status, arrays in self.pending:
                if status.ran == 2:
                    failed.append(status.message.decode(errors='replace'))
                    status.ran = 3            # reported
                if not status.released:
                    kept.append((status, arrays))
            self.pending = kept
        if failed:
            raise DirectUpdateFailed(
                'namsg: %d fused ARSG update%s (direct call) could not run in MXNet\'s engine and '
                'left %s weights as they were: %s' % (
                    len(failed), 's' if len(failed) > 1 else '',
                    'their' if len(failed) > 1 else 'its', failed[0]))


def _mapped_form(form):
    """The library of ``form``, built and mapped in this process if needed, whichever form
    :func:`load` took: the direct call's _DirectLibrary, or the operator's path (MXNet 1.7 on).
    Raises FusedUnavailable where it cannot be had."""
    if form not in _mapped:
        with _lock:
            if form not in _mapped:
                _build_and_map(form)
    return _mapped[form]


def _direct_library():
    """The direct-call library (see ``_mapped_form``)."""
    return _mapped_form(DIRECT)


def _check_direct_calls_at_exit():
    """At exit: wait for the direct calls still queued, and log a failure no update raised."""
    library = _mapped.get(DIRECT)
    if library is None or not library.pending:
        return
    try:
        mx.nd.waitall()
        library.raise_failures()
    except mx.base.MXNetError as e:     # DirectUpdateFailed, or a queued operation's error
        logger.error('%s', e)


atexit.register(_check_direct_calls_at_exit)


def direct_update(weights, grads, states, masters, lrs, wds, denominator_scales, *, beta1,
                  beta2, epsilon, mu, rescale_grad, clip_gradient, lower_bound, upper_bound,
                  preconditioner_index):
    """:func:`arsg_update` through the direct call, on any MXNet: the arrays are checked now,
    and the update is pushed to MXNet's engine, which runs it asynchronously in the order of its
    arrays, as it runs MXNet's own operators (see ``arsg_direct.cc``). Builds and loads its
    library on first use.

    Raises
    ------
    ValueError
        Arrays that do not fit together (counts, dtypes, sizes, sparse or GPU arrays), before
        anything is pushed.
    mxnet.base.MXNetError
        MXNet refused a call (its message).
    DirectUpdateFailed
        An earlier call, pushed, could not run (its message says why; it wrote nothing).
    """
    library = _direct_library()
    count = len(weights)
    lengths = [len(a) for a in (grads, states, lrs, wds, denominator_scales)] + \
        ([] if masters is None else [len(masters)])
    if any(length != count for length in lengths):
        raise ValueError('arsg_update: %d weights, and gradients, states, lrs, wds, '
                         'denominator_scales%s of lengths %s' % (
                             count, '' if masters is None else ', masters', lengths))
    num_states = 3 - preconditioner_index
    arrays = []
    for j, (weight, grad, state) in enumerate(zip(weights, grads, states)):
        if len(state) != num_states:
            raise ValueError('arsg_update: weight %d has %d states; preconditioner %d keeps %d'
                             % (j, len(state), preconditioner_index, num_states))
        arrays += [weight, grad] + list(state)
        if masters is not None:
            arrays.append(masters[j])
    hyper = _Hyper(preconditioner_index, masters is not None, lower_bound is not None,
                   upper_bound is not None, beta1, beta2, epsilon, mu, rescale_grad,
                   float(clip_gradient) if clip_gradient else -1.0,
                   0.0 if lower_bound is None else lower_bound,
                   0.0 if upper_bound is None else upper_bound)
    library.push(count, arrays, lrs, wds, denominator_scales, hyper)
