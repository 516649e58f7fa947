"""The fused update's direct call (namsg/kernels/arsg_direct.cc, called with ctypes and pushed to
MXNet's engine): the fused path on every MXNet from 1.5.1, with the extension operator as its
stand-in on 1.7 to 1.9. Parity over every fusable case of the table (test_parity's tests) for
each fused form; the rest forces the direct call: the same bits as the extension operator where
MXNet has one, the order
the engine gives it (a weight, gradient or state still being written, or still being read, by
queued operations when it is called; MKLDNN layouts in a Trainer loop), OpenMP threads, arrays
that do not fit together refused before anything is pushed, the arrays of a queued call kept
alive, and a failure inside the engine's run of it raised."""

import contextlib
import ctypes
import os
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

import namsg
from namsg import kernels
import test_kernels
import test_parity
from cases import CASES, CASES_BY_ID
from harness import flat_states, make_problem, run_mxnet

pytestmark = pytest.mark.skipif(
    kernels.library.direct_unavailable_reason() is not None or not kernels.load(),
    reason='no direct call here: %s' % (kernels.library.direct_unavailable_reason() or
                                        kernels._state['error']))

FUSABLE = [case for case in CASES if case.fusable]


@pytest.fixture
def direct(monkeypatch):
    """ARSG's fused path through the direct call, whichever form this MXNet takes."""
    assert kernels.load(), kernels._state['error']
    kernels.direct._direct_library()
    monkeypatch.setitem(kernels._state, 'form', kernels.DIRECT)


_SYNC_FUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_PUSH = ctypes.CFUNCTYPE(ctypes.c_int, _SYNC_FUNC, ctypes.c_void_p, _DELETER, ctypes.c_void_p,
                         ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                         ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)


@contextlib.contextmanager
def mxnet_function_replaced(field, replacement):
    """The direct call with MXNet's C API function ``field`` (of NamsgMXNetApi) replaced by the
    ctypes callback ``replacement``; everything queued is waited for afterwards."""
    library = kernels.direct._direct_library()
    saved = getattr(library.api, field)
    setattr(library.api, field, ctypes.cast(replacement, ctypes.c_void_p).value)
    try:
        yield
    finally:
        mx.nd.waitall()
        setattr(library.api, field, saved)


@contextlib.contextmanager
def engine_order_removed():
    """The direct call run at once in the caller's thread instead of pushed to MXNet's engine,
    and without the wait for the engine that MKLDNN builds add (to show that the ordering tests
    fail without the ordering)."""
    @_PUSH
    def run_now(func, param, deleter, *_):
        func(None, param)
        deleter(param)
        return 0
    saved = kernels.library._mkldnn
    kernels.library._mkldnn = lambda: False
    try:
        with mxnet_function_replaced('push_sync_nd', run_now):
            yield
    finally:
        kernels.library._mkldnn = saved


def test_direct_call_is_dispatched(direct, monkeypatch):
    """arsg_update goes to the direct call when the process took it, one call per step."""
    calls = test_kernels.record_calls(monkeypatch, 'direct_update')
    weights, grads = make_problem(2, seed=3)
    run_mxnet(CASES_BY_ID['defaults'], weights, grads, fused=True)
    assert calls == [len(weights)] * 2


# -- parity: every fusable case, every dtype ---------------------------------------------------

@pytest.mark.parametrize('test', [
    test_parity.test_float64_matches_reference, test_parity.test_float32_matches_reference,
    test_parity.test_float16_multi_precision_matches_reference,
    test_parity.test_float16_without_multi_precision_keeps_float32_state_and_tracks_reference,
    test_parity.test_float32_gradients_near_1e20_stay_finite_and_match_reference],
    ids=lambda test: test.__name__[5:])
@pytest.mark.parametrize('case', FUSABLE, ids=[case.id for case in FUSABLE])
def test_each_fused_form_matches_the_reference(case, test, each_fused_form):
    test(case, True)


@pytest.mark.parametrize('case', FUSABLE, ids=[case.id for case in FUSABLE])
def test_each_fused_form_computes_the_moments_of_the_ndarray_path(case, each_fused_form):
    test_parity.test_fused_and_ndarray_paths_compute_the_same_moments(case)


@pytest.mark.skipif(kernels.library.unavailable_reason() is not None,
                    reason='MXNet %s has no extension operator' % mx.__version__)
@pytest.mark.parametrize('dtype,multi_precision', [('float32', False), ('float64', False),
                                                   ('float16', True), ('float16', False)])
@pytest.mark.parametrize('case_id', ['everything', 'adam_preconditioner',
                                     'none_preconditioner', 'rsg_wd_clip_bounds'])
def test_direct_call_and_operator_give_the_same_bits(case_id, dtype, multi_precision,
                                                     monkeypatch):
    """One loop (arsg_kernel.h) and the same constants in both forms: equal weights and states,
    bit for bit, after 20 steps."""
    case = CASES_BY_ID[case_id]
    weights, grads = make_problem(20, seed=6)
    runs = {}
    kernels._mapped_form(kernels.OPERATOR)
    for form in (kernels.OPERATOR, kernels.DIRECT):
        monkeypatch.setitem(kernels._state, 'form', form)
        ws, updater = run_mxnet(case, weights, grads, dtype=dtype,
                                multi_precision=multi_precision, fused=True)
        runs[form] = ws + [s.asnumpy() for i in range(len(weights))
                           for s in flat_states(updater.states[i])]
    for a, b in zip(runs[kernels.OPERATOR], runs[kernels.DIRECT]):
        np.testing.assert_array_equal(a, b)


HERE = os.path.dirname(os.path.abspath(__file__))


def _run_forced(body, **env):
    """Run ``body`` in a fresh Python with the fused path through the direct call (the tests'
    folder on sys.path, numpy as np, kernels, harness and cases imported); its result."""
    script = ('import sys\n'
              'sys.path.insert(0, %r)\n'
              'import numpy as np\n'
              'from namsg import kernels\n'
              'from harness import make_problem, run_mxnet, run_reference\n'
              'from cases import CASES_BY_ID\n'
              'assert kernels.load()\n'
              'kernels.direct._direct_library()\n'
              'kernels._state["form"] = kernels.DIRECT\n' % HERE) + body
    return subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, **env))


def test_the_direct_call_under_mxnets_naive_engine():
    """MXNET_ENGINE_TYPE=NaiveEngine runs what is pushed at once, in the pushing thread: the
    direct call computes the reference there too, and is released at once."""
    result = _run_forced('weights, grads = make_problem(5, seed=9)\n'
                         'case = CASES_BY_ID["everything"]\n'
                         'fused, _ = run_mxnet(case, weights, grads, fused=True)\n'
                         'for f, e in zip(fused, run_reference(case, weights, grads)):\n'
                         '    np.testing.assert_allclose(f, e, rtol=1e-5, atol=1e-5)\n'
                         'assert all(s.released\n'
                         '           for s, _ in kernels.direct._direct_library().pending)\n'
                         'print("matched")\n', MXNET_ENGINE_TYPE='NaiveEngine')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'matched' in result.stdout


def test_results_do_not_depend_on_the_number_of_openmp_threads():
    """The chunks of a call go to OpenMP's threads; each element is computed by one of them
    the same way, so one thread and two give the same bits."""
    digests = []
    for threads in ('1', '2'):
        result = _run_forced(
            'import hashlib\n'
            'shapes = [(70001,), (129, 257), (3,), (40000,)]\n'
            'weights, grads = make_problem(5, seed=8, shapes=shapes)\n'
            'ws, _ = run_mxnet(CASES_BY_ID["everything"], weights, grads, fused=True)\n'
            'print(hashlib.sha256(b"".join(w.tobytes() for w in ws)).hexdigest())\n',
            OMP_NUM_THREADS=threads)
        assert result.returncode == 0, result.stderr[-3000:]
        digests.append(result.stdout.split()[-1])
    assert digests[0] == digests[1]


# -- engine ordering ------------------------------------------------------------------------------

N = 1000
WD = 0.1          # the step reads the weight: a weight seen too early gives another step


def _delay():
    """A (1,) array of 0 that MXNet's engine computes after a matrix product of some tenths of
    a second: operations that read it stay queued meanwhile."""
    big = mx.nd.ones((1500, 1500))
    return mx.nd.dot(big, big)[0, 0:1] * 0


def _problem():
    rng = np.random.default_rng(21)
    weight = mx.nd.array(rng.uniform(-1, 1, N))
    grad = mx.nd.array(rng.normal(size=N))
    opt = namsg.ARSG(learning_rate=0.01, wd=WD, fused=True)
    state = opt.create_state_multi_precision(0, weight)
    opt.update_multi_precision(0, weight, grad, state)        # states away from their start
    mx.nd.waitall()
    return opt, weight, grad, state


def _scenario(name):
    """Queue ``name``'s operations on a fresh problem, call the update, and return (what the
    test reads afterwards, as NumPy arrays): the weight, the states and, for the readers, what
    they read. The operations queued:

    - ``weight written``: weight += 1, behind the delay;
    - ``gradient written``: the gradient set to 2 g, behind the delay;
    - ``state written``: m += 0.5, behind the delay;
    - ``weight read``: a copy of the weight, behind the delay;
    - ``state read``: a copy of vhat, behind the delay.
    """
    opt, weight, grad, state = _problem()
    m, v, vhat = flat_states(state)
    delay = _delay()
    read = []
    if name == 'weight written':
        mx.nd.broadcast_add(weight, delay + 1, out=weight)
    elif name == 'gradient written':
        mx.nd.broadcast_add(grad * 2, delay, out=grad)
    elif name == 'state written':
        mx.nd.broadcast_add(m, delay + 0.5, out=m)
    elif name == 'weight read':
        read.append(mx.nd.broadcast_add(weight, delay))
    elif name == 'state read':
        read.append(mx.nd.broadcast_add(vhat, delay))
    opt.update_multi_precision(0, weight, grad, state)
    return [a.asnumpy() for a in [weight, m, v, vhat] + read]


SCENARIOS = ['weight written', 'gradient written', 'state written', 'weight read', 'state read']


# How the direct call is ordered: by MXNet's engine, into which it is pushed; where MXNet runs
# MKLDNN, also by the wait for the engine before it (which finds the arrays' data).
ORDERINGS = ['engine'] + (['engine after a wait'] if kernels.library._mkldnn() else [])


@pytest.mark.parametrize('ordering', ORDERINGS)
@pytest.mark.parametrize('name', SCENARIOS)
def test_direct_call_is_ordered_after_queued_writers_and_readers(name, ordering, direct,
                                                                 monkeypatch):
    """The update sees what the queued operations write, and they read what was there before
    it, as on the NDArray path, whose operators MXNet's engine orders. Run at once instead of
    pushed to the engine, the same scenario gives other values (the test can fail)."""
    with monkeypatch.context() as patch:
        if ordering == 'engine':
            patch.setattr(kernels.library, '_mkldnn', lambda: False)   # no array here is MKLDNN's
        direct_result = _scenario(name)
    with engine_order_removed():
        unordered = _scenario(name)
    monkeypatch.setitem(kernels._state, 'form', None)
    monkeypatch.setattr(kernels, 'use_fused', lambda requested=None: False)
    ordered = _scenario(name)                                 # the NDArray path
    for a, b in zip(direct_result, ordered):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(unordered, ordered))


def test_mkldnn_layouts_in_a_trainer_loop(direct):
    """A hybridized conv + BN + ReLU net whose inference forward (run before the update, or
    still queued when it is called) leaves the convolution's weight in an MKLDNN layout where
    MXNet has MKLDNN: the direct call waits for it, MXNDArrayGetData reorders it back, and
    training matches the NDArray path's."""
    fused = test_kernels.train_with_inference_between_steps(True, steps=6)
    plain = test_kernels.train_with_inference_between_steps(False, steps=6)
    for f, p in zip(fused, plain):
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-6)


# -- arrays that do not fit together --------------------------------------------------------------

def _arrays(shapes=((4,), (6,)), dtype='float32', state_dtype=None):
    weights = [mx.nd.ones(s, dtype=dtype) for s in shapes]
    grads = [mx.nd.ones(s, dtype=dtype) for s in shapes]
    states = [tuple(mx.nd.zeros(s, dtype=state_dtype or dtype) for _ in range(3))
              for s in shapes]
    return weights, grads, states


def _call(weights, grads, states, masters=None, preconditioner_index=0):
    n = len(weights)
    kernels.direct_update(weights, grads, states, masters, [0.1] * n, [0.0] * n, [1.0] * n,
                          beta1=0.9, beta2=0.99, epsilon=1e-8, mu=0.1, rescale_grad=1.0,
                          clip_gradient=None, lower_bound=None, upper_bound=None,
                          preconditioner_index=preconditioner_index)


def _untouched(weights, states):
    return all((w.asnumpy() == 1).all() for w in weights) and \
        all((s.asnumpy() == 0).all() for state in states for s in state)


def test_bad_arrays_are_refused_before_anything_is_written():
    """Each case has a good first weight and a bad second one: nothing is written."""
    weights, grads, states = _arrays()
    states[1] = (states[1][0], mx.nd.zeros((5,)), states[1][2])
    with pytest.raises(ValueError, match='the state v of weight 1 has 5 values, the weight 6'):
        _call(weights, grads, states)
    assert _untouched(weights, states)

    weights, grads, states = _arrays()
    grads[1] = grads[1].astype('float64')
    with pytest.raises(ValueError, match='the gradient of weight 1 is float64, not float32'):
        _call(weights, grads, states)
    assert _untouched(weights, states)

    weights, grads, states = _arrays(dtype='float16', state_dtype='float32')
    states[1] = (states[1][0].astype('float16'),) + states[1][1:]
    with pytest.raises(ValueError, match='the state m of weight 1 is float16, not float32'):
        _call(weights, grads, states)
    assert _untouched(weights, states)

    weights, grads, states = _arrays()
    weights[1] = weights[1].astype('float64')
    with pytest.raises(ValueError, match='weight 1 is float64, weight 0 float32: all weights '
                                         'of one call must share a dtype'):
        _call(weights, grads, states)
    assert _untouched(weights, states)

    weights, grads, states = _arrays(dtype='int32')
    with pytest.raises(ValueError, match='weight 0 is not a floating-point type: the fused '
                                         'update takes float16, float32 or float64 weights'):
        _call(weights, grads, states)

    weights, grads, states = _arrays()
    states[1] = (mx.nd.zeros((6,)).tostype('row_sparse'),) + states[1][1:]
    with pytest.raises(ValueError, match='the state m of weight 1 is sparse: the direct call '
                                         'takes dense arrays in host memory only'):
        _call(weights, grads, states)
    assert _untouched(weights, states[:1])


def test_states_and_lists_that_do_not_match_are_refused():
    weights, grads, states = _arrays()
    with pytest.raises(ValueError, match='weight 0 has 3 states; preconditioner 1 keeps 2'):
        _call(weights, grads, states, preconditioner_index=1)
    with pytest.raises(ValueError, match='2 weights, and gradients, states, lrs, wds, '
                                         r'denominator_scales, masters of lengths \[2, 2, 2, '
                                         r'2, 2, 1\]'):
        _call(weights, grads, states, masters=[mx.nd.ones((4,))])
    assert _untouched(weights, states)
    _call([], [], [])                                   # nothing to do


# -- what the engine runs later: the arrays kept alive, a failure raised ------------------------

def test_arrays_of_a_queued_call_are_kept_until_the_engine_releases_it(direct, monkeypatch):
    """The engine runs the call later, from its own thread, on the arrays' handles: a gradient
    that the caller drops at once (a temporary) stays alive until then, and the result is the
    NDArray path's. (Where MXNet runs MKLDNN the call waits for the engine before it is pushed;
    no array here is MKLDNN's, so that wait is left out, as the call is queued without it.)"""
    monkeypatch.setattr(kernels.library, '_mkldnn', lambda: False)
    results = []
    for fused in (True, False):
        opt, weight, grad, state = _problem()
        opt.fused = fused
        delay = _delay()
        opt.update_multi_precision(0, weight, mx.nd.broadcast_add(grad, delay), state)
        if fused:
            status, arrays = kernels.direct._direct_library().pending[-1]      # this call's
            assert not status.released
            assert any(a.shape == grad.shape and a is not grad for a in arrays)
        mx.nd.waitall()
        results.append([a.asnumpy() for a in [weight] + flat_states(state)])
        if fused:
            assert _released(kernels.direct._direct_library())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _released(library, timeout=30):
    """Whether the engine releases every pending call within ``timeout`` seconds (it does so a
    moment after its waiters return), and the library then forgets them."""
    deadline = time.monotonic() + timeout
    while library.pending and time.monotonic() < deadline:
        library.raise_failures()
        time.sleep(0.01)
    return library.pending == []


_GET_DATA = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))
_LAST_ERROR = ctypes.CFUNCTYPE(ctypes.c_void_p)      # a char*, which ctypes leaves alone
_INJECTED = ctypes.create_string_buffer(b'injected: MXNDArrayGetData failed')


@contextlib.contextmanager
def get_data_failing(at_the_push=False):
    """MXNDArrayGetData failing inside the engine's run of the call, as MXNet 1.5's does for
    an MKLDNN layout (the direct call is not offered there; here it is forced); or, with
    ``at_the_push``, where the call takes the data before it pushes the update (where MXNet
    runs MKLDNN, forced here on every build)."""
    @_GET_DATA
    def get_data(handle, out):
        return -1

    @_LAST_ERROR
    def last_error():
        return ctypes.addressof(_INJECTED)

    saved = kernels.library._mkldnn
    kernels.library._mkldnn = lambda: at_the_push
    try:
        with mxnet_function_replaced('get_data', get_data), \
                mxnet_function_replaced('last_error', last_error):
            yield
    finally:
        kernels.library._mkldnn = saved


def test_a_failure_in_the_engine_writes_nothing_and_is_raised_by_the_next_update(direct):
    opt, weight, grad, state = _problem()
    before = [a.asnumpy() for a in [weight] + flat_states(state)]
    with get_data_failing():
        opt.update_multi_precision(0, weight, grad, state)
        mx.nd.waitall()
    for a, b in zip(before, [a.asnumpy() for a in [weight] + flat_states(state)]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(kernels.DirectUpdateFailed,
                       match=r"namsg: 1 fused ARSG update \(direct call\) could not run in "
                             r"MXNet's engine and left its weights as they were: injected: "
                             r"MXNDArrayGetData failed"):
        opt.update_multi_precision(0, weight, grad, state)
    for a, b in zip(before, [a.asnumpy() for a in [weight] + flat_states(state)]):
        np.testing.assert_array_equal(a, b)       # the raising call pushed nothing
    opt.update_multi_precision(0, weight, grad, state)       # reported once; then it works
    assert not np.array_equal(weight.asnumpy(), before[0])


def test_a_failure_to_take_the_data_at_the_push_is_raised_by_that_update(direct):
    """Where MXNet runs MKLDNN the direct call takes the arrays' data before it pushes the
    update (after a wait for the engine): MXNet's failure there is raised at once, with MXNet's
    reason, and nothing is pushed or written."""
    opt, weight, grad, state = _problem()
    before = [a.asnumpy() for a in [weight] + flat_states(state)]
    with get_data_failing(at_the_push=True):
        with pytest.raises(mx.base.MXNetError, match='^injected: MXNDArrayGetData failed$'):
            opt.update_multi_precision(0, weight, grad, state)
        mx.nd.waitall()
    for a, b in zip(before, [a.asnumpy() for a in [weight] + flat_states(state)]):
        np.testing.assert_array_equal(a, b)
    assert kernels.direct._direct_library().pending == []
    opt.update_multi_precision(0, weight, grad, state)       # nothing left over; it works
    assert not np.array_equal(weight.asnumpy(), before[0])


def test_a_failure_in_the_last_update_is_logged_at_exit():
    result = _run_forced('import logging\n'
                         'logging.basicConfig(format="LOG %(levelname)s %(message)s")\n'
                         'import test_direct\n'
                         'opt, weight, grad, state = test_direct._problem()\n'
                         'failing = test_direct.get_data_failing()\n'
                         'failing.__enter__()\n'
                         'opt.update_multi_precision(0, weight, grad, state)\n'
                         'print("pushed")\n')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'pushed' in result.stdout
    assert ("LOG ERROR namsg: 1 fused ARSG update (direct call) could not run in MXNet's engine "
            "and left its weights as they were: injected: MXNDArrayGetData failed"
            in result.stderr), result.stderr[-3000:]
