"""MXNet optimizers against the NumPy reference over 50 steps, for every case of the table,
in float64, float32 and float16 (with and without multi_precision)."""

import numpy as np
import pytest

import namsg  # noqa: F401  (registers the optimizers)
from cases import PATH_IDS, PATHS
from harness import assert_all_close, make_problem, run_mxnet, run_reference

STEPS = 50


@pytest.mark.parametrize('case,fused', PATHS, ids=PATH_IDS)
def test_float64_matches_reference(case, fused):
    weights, grads = make_problem(STEPS, seed=1)
    actual, _ = run_mxnet(case, weights, grads, dtype='float64', fused=fused)
    # Same arithmetic in the same precision: only the order of operations differs.
    assert_all_close(actual, run_reference(case, weights, grads), rtol=1e-9, atol=1e-11,
                     what=case.id)


@pytest.mark.parametrize('case,fused', PATHS, ids=PATH_IDS)
def test_float32_matches_reference(case, fused):
    weights, grads = make_problem(STEPS, seed=2)
    weights32 = [w.astype(np.float32) for w in weights]
    grads32 = [[g.astype(np.float32) for g in gs] for gs in grads]
    actual, _ = run_mxnet(case, weights32, grads32, dtype='float32', fused=fused)
    # float32 rounds each operation at ~6e-8 relative; 50 steps of size <= lr / sqrt(1 - beta2)
    # accumulate well under 1e-5 on O(1) weights.
    assert_all_close(actual, run_reference(case, weights32, grads32), rtol=1e-5, atol=1e-5,
                     what=case.id)


def _flatten(state):
    if isinstance(state, tuple):
        return [leaf for s in state for leaf in _flatten(s)]
    return [state]


def _to_float16(arrays):
    return [a.astype(np.float16).astype(np.float64) for a in arrays]


@pytest.mark.parametrize('case,fused', PATHS, ids=PATH_IDS)
def test_float16_multi_precision_matches_reference(case, fused):
    weights, grads = make_problem(STEPS, seed=3)
    weights16 = _to_float16(weights)
    grads16 = [_to_float16(gs) for gs in grads]
    actual, updater = run_mxnet(case, weights16, grads16, dtype='float16', multi_precision=True,
                                 fused=fused)
    expected = run_reference(case, weights16, grads16)
    # The float32 master copy carries the trajectory: float32 tolerance.
    masters = [updater.states[i][0].asnumpy().astype(np.float64) for i in range(len(weights))]
    assert all(updater.states[i][0].dtype == np.float32 for i in range(len(weights)))
    assert_all_close(masters, expected, rtol=1e-5, atol=1e-5, what=case.id + ' master')
    # The float16 weight is the master rounded once: half an ulp of float16 (2**-11 relative).
    assert_all_close(actual, expected, rtol=2 ** -10, atol=1e-5, what=case.id + ' weight')


@pytest.mark.parametrize('case,fused', PATHS, ids=PATH_IDS)
def test_float16_without_multi_precision_stays_finite_and_tracks_reference(case, fused):
    weights, grads = make_problem(STEPS, seed=4)
    weights16 = _to_float16(weights)
    grads16 = [_to_float16(gs) for gs in grads]
    with pytest.warns(UserWarning, match='multi_precision'):
        actual, updater = run_mxnet(case, weights16, grads16, dtype='float16', fused=fused)
    for i in range(len(weights)):
        assert all(s.dtype == np.float32 for s in _flatten(updater.states[i])), \
            'float16 weights must keep their state in float32 (epsilon underflows)'
    assert all(np.isfinite(a).all() for a in actual)
    # The weights are rounded to float16 after every step; the reference does the same.
    # A rounding that falls the other way moves a weight by one float16 ulp (<= 2**-11 * 0.6
    # here) and later steps carry that along: a few ulps after 50 steps.
    expected = run_reference(case, weights16, grads16,
                             round_weights=lambda x: x.astype(np.float16).astype(np.float64))
    assert_all_close(actual, expected, rtol=0, atol=4e-3, what=case.id)
