"""MXNet optimizers against the NumPy reference over 50 steps, for every case of the table,
in float64, float32 and float16 (with and without multi_precision)."""

import warnings

import numpy as np
import pytest

import namsg  # noqa: F401  (registers the optimizers)
from cases import CASES, PATH_IDS, PATHS
from harness import assert_all_close, flat_states, make_problem, run_mxnet, run_reference

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
def test_float16_without_multi_precision_keeps_float32_state_and_tracks_reference(case, fused):
    weights, grads = make_problem(STEPS, seed=4)
    weights16 = _to_float16(weights)
    grads16 = [_to_float16(gs) for gs in grads]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        actual, updater = run_mxnet(case, weights16, grads16, dtype='float16', fused=fused)
    # MXNet warns that float16 weights without multi_precision accumulate in float16; the
    # state here is float32 (checked next), so that warning would mislead.
    assert not [w for w in caught if 'Accumulating with float16' in str(w.message)]
    for i in range(len(weights)):
        assert all(s.dtype == np.float32 for s in flat_states(updater.states[i])), \
            'float16 weights must keep their state in float32 (epsilon underflows)'
    assert all(np.isfinite(a).all() for a in actual)
    # The weights are rounded to float16 after every step; the reference does the same.
    # A rounding that falls the other way moves a weight by one float16 ulp (<= 2**-11 * 0.6
    # here) and later steps carry that along: a few ulps after 50 steps.
    expected = run_reference(case, weights16, grads16,
                             round_weights=lambda x: x.astype(np.float16).astype(np.float64))
    assert_all_close(actual, expected, rtol=0, atol=4e-3, what=case.id)


@pytest.mark.parametrize('case,fused', PATHS, ids=PATH_IDS)
def test_float32_gradients_near_1e20_stay_finite_and_match_reference(case, fused):
    """g**2 overflows float32 beyond 1.8e19; ((1 - beta2) g) g, as the paper's v update reads,
    does not. v tends to g**2 itself, so a finite v is possible only while it has not got
    there: 5 steps with beta2 >= 0.9 reach at most 1 - 0.9**5 = 41% of g**2 (2.6e38 here)."""
    rng = np.random.default_rng(9)
    weights, _ = make_problem(1, seed=9)
    weights32 = [w.astype(np.float32) for w in weights]
    grads32 = [[(rng.choice([-1.0, 1.0], size=w.shape) * rng.uniform(2e19, 2.5e19, size=w.shape)
                 ).astype(np.float32) for w in weights] for _ in range(5)]
    actual, updater = run_mxnet(case, weights32, grads32, dtype='float32', fused=fused)
    for i in range(len(weights)):
        assert all(np.isfinite(s.asnumpy()).all() for s in flat_states(updater.states[i])), \
            '%s: state of array %d overflowed' % (case.id, i)
    # Without a preconditioner (or in RAdam's warm-up) weights grow to ~1e17 and the float32
    # error scales with the largest of them: tolerance relative to each array's scale.
    for i, (a, e) in enumerate(zip(actual, run_reference(case, weights32, grads32))):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(e).max()),
                                   err_msg='%s: array %d differs' % (case.id, i))


@pytest.mark.parametrize('case', [case for case in CASES if case.fusable],
                         ids=[case.id for case in CASES if case.fusable])
def test_fused_and_ndarray_paths_compute_the_same_moments(case):
    """The fused kernel rounds its constants (1 - beta1, 1 - beta2) once from double, as the
    NDArray path's scalars are: after a step from zero state, m is (1 - beta1) g rounded
    once on both paths (1 - float32(beta1) was off by 1.3e-5 relative)."""
    weights, grads = make_problem(1, seed=10)
    weights32 = [w.astype(np.float32) for w in weights]
    grads32 = [[g.astype(np.float32) for g in gs] for gs in grads]
    runs = {fused: run_mxnet(case, weights32, grads32, dtype='float32', fused=fused)[1]
            for fused in (False, True)}
    for i in range(len(weights)):
        fused_state, ndarray_state = (flat_states(runs[f].states[i]) for f in (True, False))
        for a, b in zip(fused_state, ndarray_state):
            np.testing.assert_array_equal(a.asnumpy(), b.asnumpy(), err_msg=case.id)
