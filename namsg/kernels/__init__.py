"""The fused ARSG update: which form this process takes, and the switch between it and the
NDArray path.

One update loop (``arsg_kernel.h``: weight decay, rescale, clip, m, v, vhat and the weight in
one pass over each array, all arrays of a call in one OpenMP loop) comes in two forms, each
pushed to MXNet's engine, which runs it asynchronously in the order of its arrays:

- the **direct call** (``arsg_direct.cc``, :mod:`namsg.kernels.direct`), a plain shared library
  that needs no MXNet header, loaded with ctypes, which pushes the update through MXNet's C API.
  It is the fused path wherever it can be had: on every MXNet from 1.5.1, but not on 1.5.0 nor
  on 1.5 built with MKLDNN (``mxnet-mkl``): there it is the NDArray path. Its call costs less
  than the operator's: on ResNet-20's 65 weights about half the operator's, which is most of
  ARSG's step (``scripts/benchmark_optimizers.py`` times both).
- the **operator** (``arsg_update.cc``, :mod:`namsg.kernels.operator`), an MXNet operator
  registered through MXNet's extension API and loaded with ``mx.library.load``. It stands in
  for the direct call on MXNet 1.7 to 1.9 where that cannot be built or loaded (a warning says
  why).

Each form's library is compiled on first use (the direct call's with no MXNet header, one for
every MXNet; the operator's against the installed MXNet's extension API) and cached under
``$NAMSG_KERNEL_CACHE`` (default ``~/.cache/namsg``): :mod:`namsg.kernels.library` says what
this MXNet can have, and builds, caches and maps a library; :mod:`namsg.kernels.cache` lists
the cache and removes what this MXNet does not use; :mod:`namsg.kernels.layouts` brings arrays
out of MKLDNN's blocked layouts before a call. The package itself chooses the form and
the path, and hands on the public names of its modules (``namsg.kernels.build`` is
:func:`namsg.kernels.library.build`, and so on: see ``namsg.kernels.__all__``).

``python -m namsg.kernels build`` builds the library this MXNet uses ahead of time (for
read-only or shared caches); ``python -m namsg.kernels list`` shows the cache and ``python -m
namsg.kernels clean`` removes the libraries that this MXNet does not use (``python -m
namsg.kernels --help``).

``$NAMSG_FUSED`` chooses the path for optimizers that leave ``fused=None``: ``auto`` (default:
the fused path, in either form, where it can be built, else the NDArray path with one warning),
``1`` (fused, an error if it cannot be had), ``0`` (NDArray path). Which path and form are
taken is said once per process (an INFO log line naming the library).
"""

import logging
import os
import warnings

import mxnet as mx

from . import direct, library, operator
from .cache import CachedLibrary, cached_libraries, clean_cache
from .direct import DirectUpdateFailed, direct_update
from .library import DIRECT, OPERATOR, FusedUnavailable, build, entry_points, library_path
from .operator import operator_update

__all__ = ['FusedUnavailable', 'DirectUpdateFailed', 'CachedLibrary', 'OPERATOR', 'DIRECT',
           'build', 'library_path', 'load', 'fused_switch', 'use_fused', 'fused_form',
           'arsg_update', 'operator_update', 'direct_update', 'cached_libraries', 'clean_cache',
           'entry_points']

SWITCH = 'NAMSG_FUSED'

# The package's one logger (see namsg.kernels.library).
logger = logging.getLogger('namsg.kernels')

# loaded: a fused form is ready (form: which, path: its library); error: why none can be had.
_state = {'loaded': False, 'error': None, 'warned': False, 'form': None, 'path': None}


def _opener(form):
    """What maps the library of ``form`` into this process: the direct call's
    ``_DirectLibrary``, or the operator's loader into MXNet."""
    return direct._DirectLibrary if form == DIRECT else operator._load_library


def _mapped_form(form):
    """The library of ``form``, built and mapped in this process if needed, whichever form
    :func:`load` took: the direct call's ``_DirectLibrary``, or the operator's path (MXNet 1.7
    on). Raises FusedUnavailable where it cannot be had."""
    return library._mapped_form(form, _opener(form))


def load():
    """Build (if needed) and load a fused form once per process: the direct call where it can
    be had, else the operator into MXNet (see :func:`namsg.kernels.library.fused_forms`). True
    on success; the reason for a failure is kept for :func:`use_fused`. The form taken is said
    once: an INFO log line, or a warning-level one when the operator stands in for a direct call
    that failed."""
    with library._lock:
        if _state['loaded'] or _state['error'] is not None:
            return _state['loaded']
        reasons = []
        for form in library.fused_forms():
            try:
                path = library._build_and_map(form, _opener(form))
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
        raise FusedUnavailable('the fused ARSG update is not available: %s' % _state['error'])
    if not _state['warned']:
        _state['warned'] = True
        warnings.warn('namsg: %s; using the NDArray path (slower, same results). Set %s=0 '
                      'to silence this.' % (_state['error'], SWITCH))
    return False


def arsg_update(weights, grads, states, masters, lrs, wds, denominator_scales, *, beta1, beta2,
                epsilon, mu, rescale_grad, clip_gradient, lower_bound, upper_bound,
                preconditioner_index):
    """One fused ARSG step for all ``weights``, in place, in the form this process took
    (:func:`fused_form`: the extension operator or the direct call, each pushed to MXNet's
    engine, which runs it asynchronously in the order of its arrays). Both compute the same
    values.

    Parameters
    ----------
    weights : list of NDArray
        The weights, updated in place: dense arrays on one CPU context, all of one dtype
        (float16, float32 or float64).
    grads : list of NDArray
        Weight j's gradient, dense, of its weight's shape, dtype and context.
    states : list of tuple of NDArray
        Weight j's states, ``(m, v, vhat)``, ``(m, v)`` or ``(m,)`` by the preconditioner,
        float32 for float16 weights, else of the weight's dtype; updated in place.
    masters : list of NDArray or None
        float32 master copies of the weights (multi_precision), updated in place, or None.
    lrs : list of float
        Each weight's step size.
    wds : list of float
        Each weight's weight decay.
    denominator_scales : list of float
        Each weight's ``1 / sqrt(1 - beta2^t)``, read by the 'adam' preconditioner only.
    beta1 : float
        The momentum's decay rate, in [0, 1) (:class:`namsg.ARSG`'s ``beta1``).
    beta2 : float
        The second moment's decay rate, in [0, 1) (:class:`namsg.ARSG`'s ``beta2``).
    epsilon : float
        vhat's initial value ('amsgrad') or the denominator's offset ('adam'), > 0
        (:class:`namsg.ARSG`'s ``epsilon``).
    mu : float
        The observation factor, in [0, 1) (:class:`namsg.ARSG`'s ``mu``).
    rescale_grad : float
        The gradients' factor, g = clip(rescale_grad * grad + wd * w, clip_gradient)
        (:class:`mxnet.optimizer.Optimizer`'s).
    clip_gradient : float or None
        The clipping threshold; None or 0: none.
    lower_bound : float or None
        The projection's lower bound; None: unbounded below.
    upper_bound : float or None
        The projection's upper bound; None: unbounded above.
    preconditioner_index : int
        The index of the preconditioner in :data:`namsg.PRECONDITIONERS` (0 'amsgrad', 1
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
        raise FusedUnavailable('the fused ARSG update is not available: %s' % _state['error'])
    update = direct_update if _state.get('form') == DIRECT else operator_update
    update(weights, grads, states, masters, lrs, wds, denominator_scales, beta1=beta1,
           beta2=beta2, epsilon=epsilon, mu=mu, rescale_grad=rescale_grad,
           clip_gradient=clip_gradient, lower_bound=lower_bound, upper_bound=upper_bound,
           preconditioner_index=preconditioner_index)
