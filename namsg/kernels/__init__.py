"""The fused ARSG operator: building it, loading it into MXNet, and calling it.

``arsg_update.cc`` is compiled on first use with the machine's C++ compiler (``$CXX`` or
``g++``) against the headers that the mxnet wheel ships (``include/mxnet/lib_api.h``,
``src/lib_api.cc``), cached under ``$NAMSG_KERNEL_CACHE`` (default ``~/.cache/namsg``) by a
hash of the sources, the flags and the MXNet version, and loaded with ``mx.library.load``.

``$NAMSG_FUSED`` chooses the path for optimizers that leave ``fused=None``: ``auto`` (default:
the fused path where it can be built, else the NDArray path with one warning), ``1`` (fused,
an error if it cannot be had), ``0`` (NDArray path).
"""

import ctypes
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import mxnet as mx
from mxnet.base import _LIB, check_call

__all__ = ['FusedUnavailable', 'load', 'use_fused', 'arsg_update']

SOURCE = Path(__file__).with_name('arsg_update.cc')
OP_NAME = '_namsg_arsg_update'
# What MXNet's library loader (MXLoadLib in MXNet 1.9) looks up with dlsym: the extern "C" block
# of lib_api.h. The library exports these and nothing else.
EXPORTS = ('initialize', '_opVersion', '_opRegSize', '_opRegGet', '_opCallFree',
           '_opCallParseAttrs', '_opCallInferShape', '_opCallInferType', '_opCallInferSType',
           '_opCallFCompute', '_opCallMutateInputs', '_opCallCreateOpState',
           '_opCallDestroyOpState', '_opCallFStatefulCompute', '_partRegSize', '_partRegGetCount',
           '_partRegGet', '_partCallSupportedOps', '_partCallCreateSelector', '_partCallSelect',
           '_partCallSelectInput', '_partCallSelectOutput', '_partCallFilter', '_partCallReset',
           '_partCallReviewSubgraph', '_passRegSize', '_passRegGet', '_passCallGraphPass',
           '_msgSize', '_msgGet')
# Every other symbol -- lib_api.cc's mxnet::ext classes and the C++ templates that both sources
# instantiate -- is local (`local: *`), so the library's calls stay inside it: otherwise the
# dynamic linker binds them to the first copy in the process's global scope, e.g.
# libmxnet.so's (built with the old std::string), which importing horovod.mxnet makes global
# (RTLD_GLOBAL), or another extension's, and the update crashes. -Bsymbolic binds the exported
# names to the library's own definitions too.
VERSION_SCRIPT = '{\n  global:\n    %s;\n  local: *;\n};\n' % ';\n    '.join(EXPORTS)
# Named by its content: the name is in FLAGS, and so in the cache key.
VERSION_SCRIPT_NAME = 'exports-%s.map' % hashlib.sha256(VERSION_SCRIPT.encode()).hexdigest()[:16]
# -fno-math-errno and -fno-trapping-math let GCC vectorise the update loop (sqrt, and the
# selects of min/max, which it will not if-convert while FP operations may trap); neither
# changes a result, and nothing here reads errno or FP exception flags.
FLAGS = ['-O3', '-fno-math-errno', '-fno-trapping-math', '-std=c++14', '-fPIC', '-shared',
         '-fopenmp', '-Wall', '-Wl,-Bsymbolic', '-Wl,--version-script=' + VERSION_SCRIPT_NAME]
# The library is built on the machine that runs it, so it may use all of that CPU's vector
# units (AVX-512 here, where the default is SSE2). -ffp-contract=off keeps
# a*b+c as two roundings, as in the NDArray path, instead of fusing it into one FMA. The
# cache key includes the CPU, so a home directory shared by unlike machines stays correct;
# a compiler that rejects these flags gets a portable build.
ARCH_FLAGS = ['-march=native', '-ffp-contract=off']
SWITCH = 'NAMSG_FUSED'
_MKLDNN = mx.runtime.Features().is_enabled('MKLDNN')

_lock = threading.Lock()
_state = {'loaded': False, 'error': None, 'warned': False}


class FusedUnavailable(RuntimeError):
    """The fused operator was required (NAMSG_FUSED=1 or fused=True) but cannot be built."""


def _mxnet_dir():
    return Path(mx.__file__).resolve().parent


def _cache_dir():
    return Path(os.environ.get('NAMSG_KERNEL_CACHE', Path.home() / '.cache' / 'namsg'))


def _build_command(compiler, output, arch_flags):
    """The compiler's argument list; writes the version script beside ``output`` if absent."""
    mxnet_dir = _mxnet_dir()
    script = Path(output).parent / VERSION_SCRIPT_NAME
    if not script.is_file():
        fd, tmp = tempfile.mkstemp(dir=script.parent, suffix='.map.tmp')
        with os.fdopen(fd, 'w') as f:
            f.write(VERSION_SCRIPT)
        os.replace(tmp, script)
    flags = [flag.replace(VERSION_SCRIPT_NAME, str(script)) for flag in FLAGS]
    return [compiler] + flags + arch_flags + ['-I', str(mxnet_dir / 'include' / 'mxnet'),
                                 '-I', str(mxnet_dir / 'include'), str(SOURCE),
                                 str(mxnet_dir / 'src' / 'lib_api.cc'), '-o', str(output)]


def _cpu_identity():
    """The CPU's model and instruction-set flags (what -march=native compiles for)."""
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(('model name', 'flags',
                                                                   'Features', 'CPU part'))]
        return ''.join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def library_path():
    """Where the built library for these sources, flags, MXNet version and CPU is cached."""
    compiler = os.environ.get('CXX', 'g++')
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), (_mxnet_dir() / 'src' / 'lib_api.cc').read_bytes(),
                 mx.__version__.encode(), ' '.join([compiler] + FLAGS + ARCH_FLAGS).encode(),
                 _cpu_identity().encode()):
        digest.update(part)
    return _cache_dir() / ('libnamsg_arsg_%s.so' % digest.hexdigest()[:16])


def build(path=None):
    """Compile the operator library to ``path`` (default: the cache) unless it is there;
    concurrent builders wait for each other. Returns the path; raises FusedUnavailable."""
    path = Path(path or library_path())
    if path.is_file():
        return path
    compiler = os.environ.get('CXX', 'g++')
    if shutil.which(compiler) is None:
        raise FusedUnavailable('no C++ compiler (%s) on PATH' % compiler)
    for needed in (_mxnet_dir() / 'include' / 'mxnet' / 'lib_api.h',
                   _mxnet_dir() / 'src' / 'lib_api.cc'):
        if not needed.is_file():
            raise FusedUnavailable('the mxnet package lacks %s' % needed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / '.build.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return path
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.so.tmp')
        os.close(fd)
        try:
            for arch_flags in (ARCH_FLAGS, []):
                result = subprocess.run(_build_command(compiler, tmp, arch_flags),
                                        capture_output=True, text=True)
                if result.returncode == 0:
                    break
            if result.returncode != 0:
                raise FusedUnavailable('compiling %s failed:\n%s' % (SOURCE.name,
                                                                     result.stderr[-3000:]))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def load():
    """Build (if needed) and load the operator into MXNet once per process. True on success;
    the reason for a failure is kept for :func:`use_fused`."""
    with _lock:
        if _state['loaded'] or _state['error'] is not None:
            return _state['loaded']
        try:
            mx.library.load(str(build()), verbose=False)
            _state['loaded'] = True
        except (FusedUnavailable, OSError, mx.base.MXNetError) as e:
            _state['error'] = str(e)
        return _state['loaded']


def _switch():
    value = os.environ.get(SWITCH, 'auto').strip().lower()
    if value not in ('auto', '0', '1'):
        raise ValueError('%s=%r: set it to auto, 0 or 1' % (SWITCH, value))
    return value


def use_fused(requested=None):
    """Whether an optimizer with ``fused=requested`` takes the fused path: True/False force it
    (True raises FusedUnavailable if it cannot be had), None follows $NAMSG_FUSED."""
    if requested is None:
        switch = _switch()
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
        warnings.warn('namsg: the fused ARSG operator is not available (%s); using the slower '
                      'NDArray path. Set %s=0 to silence this.' % (_state['error'], SWITCH))
    return False


def _join(values):
    """Comma-separated; one value when all are equal (the operator broadcasts it), which keeps
    the attribute strings short in the common case."""
    first = values[0]
    if all(v == first for v in values):
        return repr(float(first))
    return ','.join(repr(float(v)) for v in values)


def _to_default_layout(arrays):
    """Make sure no array is left in an MKLDNN (oneDNN) blocked layout. An MKLDNN convolution
    or dense layer run for inference reorders its weight into such a layout in place, and
    MXNet 1.9 hands an in-place extension operator that array as it is, which fails
    ("We can't generate TBlob for MKLDNN data"). MXNDArrayGetData reorders it back to the
    default layout; waiting for pending writes first catches a reorder still queued."""
    pointer = ctypes.c_void_p()
    for array in arrays:
        array.wait_to_read()
        check_call(_LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))


def arsg_update(weights, grads, states, masters, lrs, wds, denominator_scales, *, beta1, beta2,
                epsilon, mu, rescale_grad, clip_gradient, lower_bound, upper_bound,
                preconditioner_index):
    """One fused call for all ``weights`` (dense NDArrays on one CPU context), in place.
    ``states[j]`` is weight j's state tuple; ``masters`` is None or the float32 master copies."""
    if _MKLDNN:
        _to_default_layout(weights)
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
