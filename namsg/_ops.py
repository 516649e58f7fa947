"""The NDArray path's arithmetic in few MXNet operator calls, rounding for rounding as the fused
update's loop (``namsg/kernels/arsg_kernel.h``) and the NumPy reference's order of operations.

Each function writes into an array it is given (``out=``, in place) instead of making a new one,
and where one of MXNet's own fused update operators computes the same chain of float32 roundings
it uses that operator instead of the chain, with its hyper-parameters set so that every extra
term is an exact 1 or 0:

* ``sgd_update(x, y, lr=-1, wd=a - 1, rescale_grad=b)`` is ``(1 - lr wd) x - (lr rescale) y``
  = ``a x + b y``, each product rounded once, then the sum, when ``1 + (a - 1)`` is exactly
  ``a`` in float32 (a = 1, and any a in [0.5, 2], such as the decay rates);
* ``sgd_mom_update(w, y, x, momentum=a, lr=-b, wd=0)`` sets ``x = a x - 0 w + b y``: ``a x + b
  y`` where ``w`` is finite (its ``w + x`` output goes to a scratch array, or is the step);
* ``contrib.quadratic(g, a=c)`` is ``g (c g + 0) + 0`` = ``(c g) g``, the overflow-safe order;
* ``adam_update(w, w, s, d, lr, beta1=1, beta2=1, epsilon, wd=0, rescale_grad=0)`` is
  ``w - lr s / (sqrt(d) + epsilon)``; it adds ``0 r`` to s and ``0 r r`` to d, r = 0 w + 0 w.
  MXNet 1.5 writes r back into its gradient input (``grad = rescale_grad grad + wd weight``,
  in place), so there the gradient passed is a scratch copy ``0 w``, not ``w`` itself, which
  would become 0 before the weight is read (see :func:`adam_writes_grad`).

Parameters left out of the calls take MXNet's defaults: wd = 0, rescale_grad = 1, clip_gradient
= -1 (no clipping), and b = c = 0 for quadratic.

The hidden ``0 * w`` terms are 0, or NaN where the weight w is not finite. The optimizers compute
``g = rescale_grad * grad + wd * weight`` with its weight term even when wd = 0 (as the reference
and MXNet's adam do), so a non-finite weight has made g, and with it every state, NaN already:
the hidden terms change nothing, in every case (see tests/test_ops.py).

Those operators take their scalars as float32 parameters, so they stand in only for float32
arrays (float16 weights are computed in float32 here); float64 arrays take the operator chain.
MXNet's CUDA kernels may contract ``a x + b y`` into one fused multiply-add (one rounding less),
so on GPUs the sgd operators are not used; the quadratic and adam forms are exact under
contraction too (each multiply-add there has an exact 0 or 1 term). MXNet also rounds scalar
parameters through a decimal string, not always exactly (1.9.1); constants for float32 arrays
are therefore rounded to float32 here first, which any such parsing returns unchanged.
"""

import weakref

import numpy

from mxnet import ndarray as nd

_F32 = numpy.float32


class Arith:
    """How to compute for arrays of one dtype on one device type: which fused forms apply, and
    the constants rounded for that dtype. ``dtype``: numpy dtype of the arrays computed on;
    ``device_type``: their context's (``'cpu'``, ``'gpu'``, ...)."""

    __slots__ = ('float32', 'fused_forms', 'sgd_forms', 'adam_grad_copy')

    def __init__(self, dtype, device_type, chain_only=False):
        self.float32 = dtype == _F32
        #: quadratic and adam_update stand in (``chain_only``: never, the operator chain that
        #: they replace, for comparing the two).
        self.fused_forms = self.float32 and not chain_only
        #: sgd_update and sgd_mom_update stand in.
        self.sgd_forms = self.fused_forms and device_type != 'gpu'
        #: adam_update gets ``0 w`` in a scratch array as its gradient, not ``w`` itself.
        self.adam_grad_copy = self.fused_forms and adam_writes_grad()

    def scalar(self, value):
        """``value`` as the operator must receive it (see the module docstring)."""
        return float(_F32(value)) if self.float32 else float(value)

    def scale(self, out, x, a):
        """out = a x."""
        nd._internal._mul_scalar(x, scalar=self.scalar(a), out=out)

    def axpby(self, out, a, x, b, y, tmp):
        """out = a x + b y (each product rounded, then the sum); ``out`` may be ``x``; ``tmp``
        is scratch of the same shape (distinct from the others), needed only without the
        fused forms."""
        if self.sgd_forms:
            wd = _one_plus(a)
            if wd is None:          # a is not 1 + (a - 1): scale x first, then add b y
                self.scale(out, x, a)
                x, wd = out, 0.0
            nd.sgd_update(x, y, lr=-1.0, wd=wd, rescale_grad=self.scalar(b), out=out)
            return
        if not (a == 1.0 and out is x):
            self.scale(out, x, a)
        if b != 1.0:
            self.scale(tmp, y, b)
            y = tmp
        nd.elemwise_add(out, y, out=out)

    def axpby_sgd_mom(self, x, a, b, y, weight, junk):
        """x = a x + b y where ``weight`` (read, never written) is finite, NaN where it is not;
        ``junk`` (scratch) receives ``weight + x``. One operator where the sgd forms apply."""
        if self.sgd_forms:
            nd.sgd_mom_update(weight, y, x, lr=-self.scalar(b), momentum=self.scalar(a),
                              out=junk)
        else:
            self.axpby(x, a, x, b, y, junk)

    def descend(self, weight, a, x, b, y, tmp):
        """weight = weight - (a x + b y); ``x`` is scratch (overwritten), ``tmp`` scratch needed
        only without the sgd forms. NaN where ``weight`` is not finite. One operator where the
        sgd forms apply."""
        if self.sgd_forms:
            # The momentum form with momentum -a and lr b: x = -a x - b y, weight = weight + x.
            nd.sgd_mom_update(weight, y, x, lr=self.scalar(b), momentum=-self.scalar(a),
                              out=weight)
            return
        self.axpby(x, a, x, b, y, tmp)
        nd.elemwise_sub(weight, x, out=weight)

    def square_scaled(self, out, c, g):
        """out = (c g) g: g**2 alone overflows float32 for |g| > 1.8e19."""
        if self.fused_forms:
            nd.contrib.quadratic(g, a=self.scalar(c), out=out)
        else:
            self.scale(out, g, c)
            nd.elemwise_mul(out, g, out=out)

    def descend_scaled(self, weight, lr, s, d, epsilon, tmp, out):
        """weight = weight - (lr s) / (sqrt(d) + epsilon), d >= 0 (NaN allowed). ``s`` and
        ``d`` keep their values, except that both become NaN where the weight is not finite
        (the callers' states are NaN there already); ``tmp`` and ``out`` are scratch needed
        only without the fused forms (``out`` may be ``s`` if s may be overwritten)."""
        if self.fused_forms:
            grad = weight
            if self.adam_grad_copy:
                grad = tmp
                nd._internal._mul_scalar(weight, scalar=0.0, out=grad)
            nd.adam_update(weight, grad, s, d, lr=self.scalar(lr), beta1=1.0, beta2=1.0,
                           epsilon=self.scalar(epsilon), rescale_grad=0.0, out=weight)
            return
        nd.sqrt(d, out=tmp)
        if epsilon:
            nd._internal._plus_scalar(tmp, scalar=self.scalar(epsilon), out=tmp)
        if lr != 1.0:
            self.scale(out, s, lr)
            s = out
        nd.elemwise_div(s, tmp, out=out)
        nd.elemwise_sub(weight, out, out=weight)


_ADAM_WRITES_GRAD = []


def adam_writes_grad():
    """Whether this MXNet's ``adam_update`` overwrites its gradient input with ``rescale_grad
    grad + wd weight`` (MXNet 1.5 does, on CPU, when ``lr`` is not 0; 1.6 and later do not).
    Found once per process by running the operator on one-element arrays. The engine does not
    know of that write, so it is not ordered before later reads of the gradient either."""
    if not _ADAM_WRITES_GRAD:
        weight, grad = nd.ones((1,)), nd.ones((1,))
        out = nd.zeros((1,))
        nd.adam_update(weight, grad, nd.zeros((1,)), nd.ones((1,)), lr=1.0, wd=1.0, out=out)
        # The engine orders reads of grad only after writers it knows of: adam_update declares
        # grad an input, so wait for its output before reading grad.
        out.wait_to_read()
        _ADAM_WRITES_GRAD.append(bool(grad.asscalar() != 1.0))
    return _ADAM_WRITES_GRAD[0]


_ARITHS = {}


def arith(dtype, device_type):
    """The :class:`Arith` for arrays of ``dtype`` on ``device_type`` (made once)."""
    key = (numpy.dtype(dtype).str, device_type)
    found = _ARITHS.get(key)
    if found is None:
        found = _ARITHS[key] = Arith(numpy.dtype(dtype), device_type)
    return found


_ONE_PLUS = {}


def _one_plus(a):
    """The float32 ``wd`` for which ``1 - (-1) wd`` rounds to float32(a), or None."""
    wd = _ONE_PLUS.get(a, _ONE_PLUS)
    if wd is _ONE_PLUS:
        a32 = _F32(a)
        wd32 = _F32(a32 - _F32(1.0))
        wd = float(wd32) if _F32(_F32(1.0) + wd32) == a32 else None
        if len(_ONE_PLUS) < 4096:        # decay rates and rescale factors: a few values
            _ONE_PLUS[a] = wd
    return wd


# -- scratch arrays -----------------------------------------------------------------------------
# The step's intermediate arrays, kept per optimizer (outside it, so never pickled), device and
# dtype as flat buffers as large as the largest parameter seen, and handed out as views of a
# parameter's shape. Allocating them anew at every step cost more than the arithmetic on large
# arrays (fresh pages), and MXNet's engine orders every reuse after the reads before it.
_SCRATCH = weakref.WeakKeyDictionary()
_MAX_VIEWS = 512


def scratch(owner, like, dtype, count):
    """``count`` scratch arrays of ``like``'s shape and context, of ``dtype``, owned by
    ``owner`` (an optimizer): the same memory for every call, so each is valid only until the
    next call's operators (MXNet's engine orders them)."""
    context, shape = like.context, like.shape
    size = int(numpy.prod(shape))
    if size == 0:
        return [nd.empty(shape, context, dtype=dtype) for _ in range(count)]
    pools = _SCRATCH.setdefault(owner, {})
    key = (context.device_typeid, context.device_id, numpy.dtype(dtype).str)
    pool = pools.get(key)
    if pool is None or pool['size'] < size or len(pool['buffers']) < count:
        size = max(size, pool['size'] if pool else 0)
        count_all = max(count, len(pool['buffers']) if pool else 0)
        pool = pools[key] = {'size': size, 'views': {}, 'buffers': [
            nd.empty((size,), context, dtype=dtype) for _ in range(count_all)]}
    views = pool['views'].get(shape)
    if views is None:
        if len(pool['views']) >= _MAX_VIEWS:       # row_sparse rows come in every size
            pool['views'].clear()
        n = int(numpy.prod(shape))
        views = pool['views'][shape] = [buf[:n].reshape(shape) for buf in pool['buffers']]
    return views[:count]
