"""namsg._ops: each of MXNet's fused operators, as the NDArray path sets them, computes bit for bit
what the chain of plain operators it stands in for computes, on random values and on NaN,
infinities, signed zeros, values near float32's overflow and subnormals (equal up to the sign of
a zero: -0 == 0 here)."""

import numpy as np
import pytest

import mxnet as mx
from namsg import _ops

N = 4096
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38, 1e-40, -1e-40, 1.0],
                   dtype=np.float32)


def _values(seed, positive=False):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=N) * np.exp(rng.uniform(-20, 20, size=N))).astype(np.float32)
    x[rng.choice(N, size=200, replace=False)] = rng.choice(SPECIAL, size=200)
    return np.abs(x) if positive else x


FUSED = _ops.Arith(np.dtype(np.float32), 'cpu')
CHAIN = _ops.Arith(np.dtype(np.float32), 'cpu', chain_only=True)
# The form MXNet 1.5 gets, where adam_update overwrites its gradient input: tested on every
# release, whichever form the installed one takes.
GRAD_COPY = _ops.Arith(np.dtype(np.float32), 'cpu')
GRAD_COPY.adam_grad_copy = True
# Decay rates, 1, 0 (beta1 = 0), a power of two (1 / batch) and two that are no 1 + (a - 1).
COEFFICIENTS = [0.999, 0.9, 1.0, 0.0, 1.0 / 128, 0.01, 1e-3 * 0.9]


def _run(arith, fn, arrays):
    nds = [mx.nd.array(a, dtype='float32') for a in arrays]
    fn(arith, *nds)
    return [a.asnumpy() for a in nds]


def _same(fn, arrays, compare=None):
    with np.errstate(all='ignore'):
        fused, chain = _run(FUSED, fn, arrays), _run(CHAIN, fn, arrays)
    for k in (compare if compare is not None else range(len(arrays))):
        np.testing.assert_array_equal(fused[k], chain[k], err_msg='array %d' % k)
    return fused


def test_the_chain_is_the_reference_arithmetic():
    """The plain chain itself rounds as NumPy's float32 does, operation by operation."""
    x, y = _values(1), _values(2)
    out = _run(CHAIN, lambda ar, o, a, b, t: ar.axpby(o, 0.999, a, 0.01, b, t),
               [np.zeros(N, np.float32), x, y, np.zeros(N, np.float32)])[0]
    with np.errstate(all='ignore'):
        np.testing.assert_array_equal(out, np.float32(0.999) * x + np.float32(0.01) * y)


@pytest.mark.parametrize('a', COEFFICIENTS)
@pytest.mark.parametrize('b', [1e-3, 1.0, -0.5, 0.0])
@pytest.mark.parametrize('in_place', [True, False])
def test_axpby(a, b, in_place):
    x, y = _values(3), _values(4)
    if in_place:
        _same(lambda ar, x_, y_, t: ar.axpby(x_, a, x_, b, y_, t),
              [x, y, np.zeros(N, np.float32)], [0, 1])
    else:
        _same(lambda ar, o, x_, y_, t: ar.axpby(o, a, x_, b, y_, t),
              [np.zeros(N, np.float32), x, y, np.zeros(N, np.float32)], [0, 1, 2])


@pytest.mark.parametrize('a,b', [(1e-3, 9e-3), (0.0, 0.01), (0.5, 1.0)])
@pytest.mark.parametrize('name', ['axpby_sgd_mom', 'descend'])
def test_axpby_sgd_mom_and_descend(name, a, b):
    """Equal where the weight is finite; NaN where it is not (the hidden 0 * w), where the
    optimizers' states are NaN already (see namsg/_ops.py)."""
    x, y, w = _values(5), _values(6), _values(7)
    fn, result = {
        'axpby_sgd_mom': (lambda ar, x_, y_, w_, j: ar.axpby_sgd_mom(x_, a, b, y_, w_, j), 0),
        'descend': (lambda ar, x_, y_, w_, t: ar.descend(w_, a, x_, b, y_, t), 2)}[name]
    with np.errstate(all='ignore'):
        fused = _run(FUSED, fn, [x, y, w, np.zeros(N, np.float32)])
        chain = _run(CHAIN, fn, [x, y, w, np.zeros(N, np.float32)])
    finite = np.isfinite(w)
    np.testing.assert_array_equal(fused[result][finite], chain[result][finite])
    assert np.isnan(fused[result][~finite]).all()
    if name == 'axpby_sgd_mom':
        np.testing.assert_array_equal(fused[2], w)         # the weight is only read


@pytest.mark.parametrize('c', [1e-3, 0.01, 1.0 - 0.99, 1.0])
def test_square_scaled(c):
    _same(lambda ar, o, g: ar.square_scaled(o, c, g), [np.zeros(N, np.float32), _values(8)])


@pytest.mark.parametrize('lr,epsilon', [(1.0, 0.0), (1e-3, 1e-8), (0.3, 1e-3)])
@pytest.mark.parametrize('form', [FUSED, GRAD_COPY], ids=['weight-as-grad', 'grad-copy'])
def test_descend_scaled(lr, epsilon, form):
    """weight - lr s / (sqrt(d) + epsilon); s and d keep their values (NaN where the weight
    is not finite). The scratch arrays' old contents (NaN and infinities here) do not matter."""
    s, d, w = _values(9), _values(10, positive=True), _values(11)
    arrays = [w, s, d, _values(12), _values(13)]
    fn = lambda ar, w_, s_, d_, t, o: ar.descend_scaled(w_, lr, s_, d_, epsilon, t, o)  # noqa
    with np.errstate(all='ignore'):
        fused, chain = _run(form, fn, arrays), _run(CHAIN, fn, arrays)
    finite = np.isfinite(w)
    np.testing.assert_array_equal(fused[0][finite], chain[0][finite])
    assert np.isnan(fused[0][~finite]).all()
    for k, before in ((1, s), (2, d)):
        np.testing.assert_array_equal(fused[k][finite], before[finite])
        assert np.isnan(fused[k][~finite]).all()


def test_adam_writes_grad_is_what_this_mxnet_does():
    """The probe reports what adam_update does to its gradient input on this release (MXNet
    1.5 writes rescale_grad grad + wd weight into it; the NDArray path then must not hand it the
    weight, which the parity tests on 1.5 in .ci/compat.sh catch)."""
    grad = mx.nd.full((3,), 2.0)
    out = mx.nd.zeros((3,))
    mx.nd.adam_update(mx.nd.ones((3,)), grad, mx.nd.zeros((3,)), mx.nd.ones((3,)), lr=0.5,
                      wd=0.25, rescale_grad=3.0, out=out)
    out.wait_to_read()
    written = not np.array_equal(grad.asnumpy(), [2.0, 2.0, 2.0])
    if written:
        np.testing.assert_array_equal(grad.asnumpy(), [6.25, 6.25, 6.25])
    assert _ops.adam_writes_grad() is written
    assert FUSED.adam_grad_copy is written
