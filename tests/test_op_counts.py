"""How many MXNet operators the NDArray path runs per parameter and step (MXNet's profiler
counts them), pinned so that a change that adds operators shows here. Not timed: the speed is
measured by scripts/benchmark_optimizers.py against MXNet's own optimizers.

namsg 0.1.0 (eee91f7) ran 15 operators and freed 6 temporary arrays per parameter for ARSG's
default step ('DeleteVariable' below); each count here is the fewest that computes the fused
kernel's update bit for bit with MXNet's operators (see namsg/_ops.py). Besides them, each
update call writes the new update counts into the states with one operator, whatever the number
of parameters (see namsg/_states.py)."""

import gc
import json

import mxnet as mx
import numpy as np
import pytest

import namsg  # noqa: F401  (registers the optimizers)

SHAPES = [(16, 8), (8,), (3, 3, 2)]
TRAINER = dict(wd=1e-4, rescale_grad=1.0 / 128)   # what Trainer.step(128) sets

# (id, optimizer, arguments, dtype, multi_precision, steps before the counted one,
#  operators per parameter)
COUNTS = [
    ('arsg', 'arsg', dict(fused=False), 'float32', False, 1, 7),
    ('arsg-trainer', 'arsg', dict(TRAINER, fused=False), 'float32', False, 1, 7),
    # 1/100 is no 1 + (a - 1) in float32: rescale_grad * grad is one more operator.
    ('arsg-rescale_1/100', 'arsg', dict(TRAINER, rescale_grad=0.01, fused=False), 'float32',
     False, 1, 8),
    ('arsg-clip-bounds', 'arsg', dict(TRAINER, clip_gradient=1.0, lower_bound=-1.0,
                                      upper_bound=1.0, fused=False), 'float32', False, 1, 9),
    ('arsg-adam', 'arsg', dict(TRAINER, preconditioner='adam', fused=False), 'float32', False, 1,
     10),
    ('arsg-none', 'arsg', dict(TRAINER, preconditioner='none', fused=False), 'float32', False,
     1, 3),
    ('rsg', 'rsg', dict(TRAINER, fused=False), 'float32', False, 1, 3),
    # float16 weights: the weight and the gradient cast into float32 scratch, the result back.
    ('arsg-float16', 'arsg', dict(TRAINER, fused=False), 'float16', False, 1, 10),
    # multi_precision: the gradient cast into float32 scratch, the master copy cast back.
    ('arsg-multi_precision', 'arsg', dict(TRAINER, fused=False), 'float16', True, 1, 9),
    # float64: MXNet's fused update operators take float32 scalars, so the operator chain.
    ('arsg-float64', 'arsg', dict(TRAINER, fused=False), 'float64', False, 1, 17),
    ('amsgrad', 'amsgrad', TRAINER, 'float32', False, 1, 6),
    ('radam-warm-up', 'radam', TRAINER, 'float32', False, 1, 5),
    ('radam-rectified', 'radam', TRAINER, 'float32', False, 10, 5),
    ('ranger', 'ranger', dict(TRAINER, k=100), 'float32', False, 10, 5),
    # The slow-weight step: w - phi, phi + alpha (w - phi), phi into w.
    ('ranger-slow-step', 'ranger', dict(TRAINER, k=11), 'float32', False, 10, 8),
    ('lookahead-arsg', 'lookahead', dict(TRAINER, optimizer='arsg', fused=False, k=100),
     'float32', False, 1, 7),
]


def operator_counts(run, tmp_path):
    """{operator name: executions} while ``run()`` runs, as MXNet's profiler counts them.

    Python's cyclic garbage collector is run before and kept off during ``run()``: a collection
    in the window frees arrays that earlier tests left in reference cycles (pytest's tracebacks
    and the like), and their DeleteVariable operations would be counted as the update's
    temporaries. Which test meets such a collection follows the allocations of every test
    before it (it was radam-rectified's in one CI run, amsgrad's in another ordering).
    """
    gc.collect()
    mx.nd.waitall()
    mx.profiler.set_config(profile_imperative=True, aggregate_stats=True,
                           filename=str(tmp_path / 'profile.json'))
    gc.disable()
    mx.profiler.set_state('run')
    try:
        run()
        mx.nd.waitall()
    finally:
        mx.profiler.set_state('stop')
        gc.enable()
    try:
        text = mx.profiler.dumps(reset=True, format='json')
    except TypeError:                           # MXNet 1.5 and 1.6: json only
        text = mx.profiler.dumps(reset=True)
    operators = json.loads(text)['Time'].get('operator', {})
    # The engine's own bookkeeping (random seeds set once per process) is not the update's.
    return {name: stats['Count'] for name, stats in operators.items()
            if not name.startswith('Resource')}


def per_parameter(counts):
    """``counts`` without the one write of the update counts into the states that each update
    call makes (for Lookahead, its states' counts and its inner optimizer's together)."""
    counts = dict(counts)
    assert counts.pop('_slice_assign_scalar', 0) == 1, counts
    return counts


def _updater(name, kwargs, dtype, multi_precision):
    updater = mx.optimizer.get_updater(mx.optimizer.create(
        name, multi_precision=multi_precision, learning_rate=0.01, **kwargs))
    rng = np.random.default_rng(0)
    weights = [mx.nd.array(rng.normal(size=s), dtype=dtype) for s in SHAPES]
    grads = [mx.nd.array(rng.normal(size=s), dtype=dtype) for s in SHAPES]
    return updater, weights, grads


@pytest.mark.parametrize('name,kwargs,dtype,multi_precision,before,expected',
                         [c[1:] for c in COUNTS], ids=[c[0] for c in COUNTS])
def test_operators_per_parameter_of_the_ndarray_path(tmp_path, name, kwargs, dtype,
                                                     multi_precision, before, expected):
    updater, weights, grads = _updater(name, kwargs, dtype, multi_precision)
    indices = list(range(len(SHAPES)))
    for _ in range(before):             # the first call also makes the states
        updater(indices, grads, weights)
    counts = per_parameter(operator_counts(lambda: updater(indices, grads, weights), tmp_path))
    # No temporary arrays: every intermediate goes to the optimizer's scratch (out=).
    assert 'DeleteVariable' not in counts, counts
    assert sum(counts.values()) == expected * len(SHAPES), counts


@pytest.mark.parametrize('name,kwargs,expected', [
    ('arsg', dict(TRAINER, fused=False), 7), ('amsgrad', TRAINER, 6), ('radam', TRAINER, 5)])
def test_skip_nonfinite_grad_adds_one_operator_per_update_call(tmp_path, name, kwargs,
                                                               expected):
    """multi_all_finite over the call's gradients (the Updater hands every parameter to one
    call); its one-element result is waited for (the engine records a WaitForVar when it is
    not ready yet) and freed."""
    updater, weights, grads = _updater(name, dict(kwargs, skip_nonfinite_grad=True), 'float32',
                                       False)
    indices = list(range(len(SHAPES)))
    updater(indices, grads, weights)
    counts = per_parameter(operator_counts(lambda: updater(indices, grads, weights), tmp_path))
    assert counts.pop('multi_all_finite') == 1
    assert counts.pop('WaitForVar', 1) == 1 and counts.pop('DeleteVariable') == 1
    assert sum(counts.values()) == expected * len(SHAPES), sorted(counts.items())
