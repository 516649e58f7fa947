"""A fused form's library: whether this MXNet can have it, building it into the kernel cache,
and mapping it into the process.

Each form's library is compiled on first use with the machine's C++ compiler (``$CXX`` or
``g++``). The direct call's (``arsg_direct.cc``) needs no MXNet header and serves every MXNet.
The operator's (``arsg_update.cc``) is compiled against the extension API of the MXNet that is
installed (``include/mxnet/lib_api.h`` of the mxnet package: library API version 7 on MXNet
1.7, 10 on 1.8, 11 on 1.9; MXNet loads a library of its own version only). Version 7 is all in
the header; 10 and 11 need its implementation, ``src/lib_api.cc``, which the 1.9 wheels ship and
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
"""

import contextlib
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
from pathlib import Path

import mxnet as mx
from mxnet.base import _LIB

from .._mxnet import VERSION as MXNET_VERSION

# The fused forms (see the package's docstring).
OPERATOR = 'operator'
DIRECT = 'direct'
# The update loop, which both forms' sources include.
KERNEL_HEADER = Path(__file__).with_name('arsg_kernel.h')
SOURCE = Path(__file__).with_name('arsg_update.cc')
DIRECT_SOURCE = Path(__file__).with_name('arsg_direct.cc')
# What the direct-call library exports.
DIRECT_ENTRY_POINTS = ('namsg_arsg_direct_abi', 'namsg_arsg_direct_update')
# MXNDArrayGetData reorders an array in an MKLDNN layout from MXNet 1.6 on (1.5's fails on it).
DIRECT_MKLDNN_MXNET = (1, 6)
# namsg's implementation of the library side of extension API versions 10 and 11, compiled
# where the mxnet package lacks src/lib_api.cc (the 1.8 wheels).
EXTENSION_API = Path(__file__).with_name('extension_api.cc')
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
CACHE_ENV = 'NAMSG_KERNEL_CACHE'
LIBRARY_PREFIX = 'libnamsg_arsg_'
DIRECT_PREFIX = LIBRARY_PREFIX + 'direct_'
# What a build killed half-way leaves behind (mkstemp's names, see _compile_into and
# _write_version_script).
TEMPORARY_PATTERNS = ('*.so.tmp', '*.so.tmp.sha256', '*.map.tmp')
LOCK_NAME = '.build.lock'
# The MXNet C API functions that the direct-call library calls (NamsgMXNetApi in arsg_direct.cc,
# in its order), and the names MXNet exports them by: direct_unavailable_reason checks that this
# MXNet has them, and namsg.kernels.direct hands them to the library.
_MXNET_API = {'get_storage_type': 'MXNDArrayGetStorageType',
              'get_context': 'MXNDArrayGetContext', 'get_dtype': 'MXNDArrayGetDType',
              'get_shape': 'MXNDArrayGetShapeEx', 'get_shape64': 'MXNDArrayGetShapeEx64',
              'get_data': 'MXNDArrayGetData', 'last_error': 'MXGetLastError',
              'push_sync_nd': 'MXEnginePushSyncND'}

# Every module of the package logs on this one logger, which docs/troubleshooting.md names.
logger = logging.getLogger('namsg.kernels')

# Held while a form is built and mapped: by namsg.kernels.load too, so that a process maps
# each form once at a time.
_lock = threading.Lock()
# The forms mapped in this process: the direct call's _DirectLibrary, the operator's path;
# and the path of each form's library mapped.
_mapped = {}
_mapped_paths = {}


class FusedUnavailable(RuntimeError):
    """The fused update cannot be had: raised where it was required (``NAMSG_FUSED=1`` or
    ``fused=True``) and by :func:`build` (also ``python -m namsg.kernels build``); the message
    says why."""


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
def _mkldnn():
    """Whether MXNet runs MKLDNN (oneDNN) kernels. ``import mxnet`` of 1.5 does not import
    mxnet.runtime, hence the explicit import."""
    from mxnet import runtime
    return runtime.Features().is_enabled('MKLDNN')


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
    MXNet uses (the direct call where it can have it). The key holds the files' contents, not
    where they are: namsg installed into several venvs (one per MXNet) shares one direct-call
    library."""
    form = form or _default_form()
    if form == DIRECT:
        parts = [DIRECT_SOURCE.read_bytes(), KERNEL_HEADER.read_bytes()]
    else:
        parts = ([SOURCE.read_bytes(), KERNEL_HEADER.read_bytes(), _header().read_bytes()] +
                 [source.read_bytes() for source in _api_sources()] + [mx.__version__.encode()])
    command = '\0'.join(_build_command(_compiler(), 'OUTPUT', ARCH_FLAGS, form))
    for folder, name in ((_mxnet_dir(), '<mxnet>'), (DIRECT_SOURCE.parent, '<namsg.kernels>')):
        command = command.replace(str(folder), name)
    digest = hashlib.sha256()
    for part in parts + [command.encode(), _cpu_identity().encode()]:
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
        'cannot write the fused-update library to %s (%s): set $%s to a writable directory, '
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
        (the direct call where it can have it, else, from MXNet 1.7 on, the operator).

    Returns
    -------
    pathlib.Path
        The library's path.

    Raises
    ------
    FusedUnavailable
        This MXNet or machine cannot build it (the reason says which: for the operator MXNet
        before 1.7, no ``lib_api.h`` or an unknown extension API version; for the direct call
        MXNet 1.5.0, MXNet 1.5 with MKLDNN or an MXNet without the C API functions it calls;
        no compiler), the compiler failed, or the directory is not
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
        raise FusedUnavailable('the fused ARSG update needs a C++ compiler to build and %s is '
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


def _build_and_map(form, open_library):
    """Build the library of ``form`` if needed and map it into this process: ``open_library``
    (the operator's loader into MXNet, the direct call's ``_DirectLibrary``) is called with its
    path while the cache's shared lock keeps it there, and what it returns is kept in
    ``_mapped``; its path. A form mapped before is not mapped again (MXNet would load the
    operator's library twice)."""
    reason = _reason(form)
    if reason:
        raise FusedUnavailable(reason)
    if form in _mapped:
        return _mapped_paths[form]
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
                _mapped[form] = open_library(path)
                _mapped_paths[form] = path
                return path
    raise FusedUnavailable('%s was removed twice between its build and its loading (is a '
                           '`python -m namsg.kernels clean --all` running in a loop?)' % path)


def _mapped_form(form, open_library):
    """What ``open_library`` made of the library of ``form`` (see ``_build_and_map``), built
    and mapped in this process if needed, whichever form ``namsg.kernels.load`` took. Raises
    FusedUnavailable where it cannot be had."""
    if form not in _mapped:
        with _lock:
            if form not in _mapped:
                _build_and_map(form, open_library)
    return _mapped[form]
