"""The direct call: ARSG's step through a plain shared library (``arsg_direct.cc``), loaded with
ctypes, that pushes it to MXNet's engine through MXNet's C API.

The library needs no MXNet header. It checks the arrays at once, then pushes the update to
MXNet's engine (``MXEnginePushSyncND``), with the gradients as the arrays it reads and the rest
as those it writes, so that the engine orders and runs it asynchronously as it does MXNet's own
operators (see that file). It is the fused path wherever it can be had: on every MXNet from
1.5.1, but not on 1.5.0, whose ``MXEnginePushSyncND`` misreads its arrays, nor on 1.5 built with
MKLDNN (``mxnet-mkl``), which cannot hand over an array that an MKLDNN layer left in its blocked
layout (1.6 reorders it): there it is the NDArray path. Its call costs less than the
operator's, whose inputs MXNet's extension API dispatches one by one through the library
(shape, dtype and storage callbacks): on ResNet-20's 65 weights about half the operator's,
which is most of ARSG's step (``scripts/benchmark_optimizers.py`` times both).

A call that the engine runs and cannot complete writes nothing; the next update through the
direct call raises :class:`DirectUpdateFailed` for it, or an error line at exit says it. The
library is not an MXNet extension: MXNet neither loads nor closes it.
"""

import atexit
import ctypes
import logging
import threading

import mxnet as mx
from mxnet.base import _LIB

from . import layouts as _layouts
from . import library as _library
from .library import DIRECT, FusedUnavailable

# The version of its interface that the direct-call library must report (NAMSG_ARSG_DIRECT_ABI
# in arsg_direct.cc).
DIRECT_ABI = 4

# The package's one logger (see namsg.kernels.library).
logger = logging.getLogger('namsg.kernels')


class _MXNetApi(ctypes.Structure):
    _fields_ = [(field, ctypes.c_void_p) for field in _library._MXNET_API]


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
                     for field, name in _library._MXNET_API.items()
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
        take_data = _library._mkldnn()
        if take_data:
            _layouts._wait_for_layouts()
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


def _direct_library():
    """The direct-call library, built and mapped in this process if needed, whichever form
    ``namsg.kernels.load`` took. Raises FusedUnavailable where it cannot be had."""
    return _library._mapped_form(DIRECT, _DirectLibrary)


def _check_direct_calls_at_exit():
    """At exit: wait for the direct calls still queued, and log a failure no update raised."""
    library = _library._mapped.get(DIRECT)
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
    """:func:`~namsg.kernels.arsg_update` through the direct call, on any MXNet: the arrays are
    checked now, and the update is pushed to MXNet's engine, which runs it asynchronously in the
    order of its arrays, as it runs MXNet's own operators (see ``arsg_direct.cc``). Builds and
    loads its library on first use.

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
