"""OBSB's first stage, namsg.boost.search_step_size, on least squares where the NumPy reference
(Algorithm 1) gives every candidate's losses and hence the right choice."""

import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import namsg  # noqa: F401  (registers 'arsg', 'rsg')
from namsg import reference
from namsg.boost import STEP_SIZES, search_step_size

DIM, BATCH, ITERATIONS = 5, 16, 40


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=(1, DIM))
    x = rng.normal(size=(BATCH * 10, DIM))
    y = x @ w_true.T + 0.01 * rng.normal(size=(BATCH * 10, 1))
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]
    # Close enough to the solution that the largest step sizes overshoot within the search.
    w0 = w_true + 0.2 * rng.normal(size=(1, DIM))
    return batches, w0


def _net(w0):
    net = gluon.nn.Dense(1, use_bias=False, in_units=DIM)
    net.initialize(mx.init.Constant(mx.nd.array(w0)))
    net.weight.set_data(mx.nd.array(w0))
    return net


def _reference_losses(batches, w0, a, mu):
    """Algorithm 1 in float64 on the L2 loss 0.5 (x w - y)^2, minibatch mean."""
    w, state, losses = w0.copy(), reference.arsg_init(w0, 1e-8), []
    for i in range(ITERATIONS):
        x, y = batches[i % len(batches)]
        r = x @ w.T - y
        losses.append(float(np.mean(0.5 * r ** 2)))
        g = (r.T @ x) / len(x)
        w, state = reference.arsg_step(w, state, g, a, 0.999, 0.99, mu, 1e-8)
    return losses


def test_picks_the_step_size_the_reference_ranks_first():
    batches, w0 = _problem()
    net = _net(w0)
    found = search_step_size(net, batches, gluon.loss.L2Loss(), ITERATIONS,
                             optimizer_params={'mu': 0.05})
    window = ITERATIONS // 4
    expected = {a: np.mean(_reference_losses(batches, w0, a, 0.05)[-window:])
                for a in STEP_SIZES}
    best = min(expected, key=expected.get)
    assert found.best == best
    # Not a grid edge: the problem has a real optimum inside B.5's grid.
    assert STEP_SIZES[0] < best < STEP_SIZES[-1]
    assert [a for a, _ in found.ranking] == sorted(expected, key=expected.get)
    for a, score in found.ranking:
        assert score == pytest.approx(expected[a], rel=1e-4)
        assert found.losses[a] == pytest.approx(_reference_losses(batches, w0, a, 0.05),
                                                rel=1e-4)


def test_a_choice_at_the_edge_of_the_grid_is_said_and_the_result_prints_short(caplog):
    """A grid whose largest step size wins (its optimum lies above): a warning says so and
    ``at_edge`` is set; inside the grid, neither. The result's repr gives the ranking and the
    shape of the losses, not every per-iteration loss (it filled a screen)."""
    batches, w0 = _problem()
    inside = search_step_size(_net(w0), batches, gluon.loss.L2Loss(), ITERATIONS,
                              optimizer_params={'mu': 0.05})
    assert not inside.at_edge and not caplog.records
    low = [a for a in STEP_SIZES if a < inside.best]
    with caplog.at_level('WARNING', logger='namsg.boost'):
        edge = search_step_size(_net(w0), batches, gluon.loss.L2Loss(), ITERATIONS,
                                step_sizes=low, optimizer_params={'mu': 0.05})
    assert edge.best == max(low) and edge.at_edge
    assert ('the best step size, %g, is the largest of the grid' % max(low)) in caplog.text
    assert 'a larger one may be better' in caplog.text
    text = repr(edge)
    assert text.startswith('StepSizeSearch(best=%g, ranking=[(%g, ' % (edge.best, edge.best))
    assert text.endswith('losses: %d step sizes x %d iterations)' % (len(low), ITERATIONS))
    assert len(text) < 300          # the 200 losses alone took about 4,000 characters


def test_restores_the_network_and_replays_the_same_minibatches():
    batches, w0 = _problem(1)
    net = _net(w0)
    calls = []

    class Loader:                      # re-iterable, shorter than the search: it is cycled
        def __iter__(self):
            calls.append(1)
            return iter(batches[:3])

    found = search_step_size(net, Loader(), gluon.loss.L2Loss(), 7, step_sizes=(0.01, 0.02))
    np.testing.assert_array_equal(net.weight.data().asnumpy(), w0.astype(np.float32))
    assert len(calls) == 3             # 3 + 3 + 1 minibatches taken once, then replayed
    assert set(found.losses) == {0.01, 0.02} and all(len(v) == 7 for v in found.losses.values())
    # Both candidates start from w0 on the same first minibatch: same first loss.
    assert found.losses[0.01][0] == found.losses[0.02][0]


def test_diverged_candidates_rank_last():
    batches, w0 = _problem(2)
    found = search_step_size(_net(w0), batches, gluon.loss.L2Loss(), 20, step_sizes=(1e-3, 1e9),
                             optimizer='rsg', optimizer_params={'beta': 0.9, 'mu': 0.1})
    assert found.best == 1e-3
    assert found.ranking[-1] == (1e9, math.inf)


@pytest.mark.parametrize('kwargs, match', [
    (dict(step_sizes=()), 'step_sizes'), (dict(step_sizes=(0.1, -1)), 'step_sizes'),
    (dict(iterations=0), 'iterations'), (dict(window=11), 'window')])
def test_bad_arguments_raise_value_error(kwargs, match):
    batches, w0 = _problem()
    args = dict(iterations=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        search_step_size(_net(w0), batches, gluon.loss.L2Loss(), **args)


def test_empty_batches_and_deferred_parameters_are_named():
    batches, w0 = _problem()
    with pytest.raises(ValueError, match='batches yielded no minibatches'):
        search_step_size(_net(w0), [], gluon.loss.L2Loss(), 5)
    deferred = gluon.nn.Dense(1)
    deferred.initialize()
    with pytest.raises(ValueError, match='forward pass'):
        search_step_size(deferred, batches, gluon.loss.L2Loss(), 5)
