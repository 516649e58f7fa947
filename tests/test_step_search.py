"""OBSB's first stage, namsg.boost.search_step_size, on least squares where the NumPy reference
(Algorithm 1) gives every candidate's losses and hence the right choice."""

import math
import random
import signal
import threading
import time

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

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


def test_empty_batches_and_uninitialized_parameters_are_named():
    batches, w0 = _problem()
    with pytest.raises(ValueError, match='batches yielded no minibatches'):
        search_step_size(_net(w0), [], gluon.loss.L2Loss(), 5)
    never = gluon.nn.Dense(1, in_units=DIM, prefix='never_')
    with pytest.raises(ValueError, match=r'never_weight, never_bias are not initialized; '
                                         r'call net\.initialize\(\) first'):
        search_step_size(never, batches, gluon.loss.L2Loss(), 5)


# -- the search leaves the caller's state as it found it (issue 25, items 1 and 2) ------------

CLASSES, TOKENS, VOCAB = 3, 4, 20


def _dataset(kind, size=48):
    rng = np.random.default_rng(5)
    if kind == 'sparse':
        x = rng.integers(0, VOCAB, size=(size, TOKENS)).astype(np.float32)
    else:
        x = rng.normal(size=(size, DIM)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=size).astype(np.float32)
    return gluon.data.ArrayDataset(x, y)


def _loader(kind):
    """A loader that shuffles (NumPy's generator) and, for dense inputs, adds noise drawn on
    MXNet's engine in the iterating thread, as random augmentation does."""
    dataset = _dataset(kind)
    if kind != 'sparse':
        dataset = dataset.transform_first(
            lambda x: mx.nd.array(x) + mx.nd.random.normal(scale=0.1, shape=x.shape))
    return gluon.data.DataLoader(dataset, batch_size=8, shuffle=True, last_batch='discard')


def _model(kind, deferred=False):
    """A network drawing random numbers in training (Dropout) and with BatchNorm statistics;
    for 'sparse' its embedding weight is row_sparse."""
    if kind == 'sparse':
        net = gluon.nn.Sequential()
        net.add(gluon.contrib.nn.SparseEmbedding(VOCAB, 4), gluon.nn.Dropout(0.3),
                gluon.nn.Dense(CLASSES, in_units=0 if deferred else TOKENS * 4))
    else:
        net = gluon.nn.HybridSequential()
        net.add(gluon.nn.Dense(8, in_units=0 if deferred else DIM),
                gluon.nn.BatchNorm(in_channels=0 if deferred else 8),
                gluon.nn.Activation('relu'), gluon.nn.Dropout(0.3),
                gluon.nn.Dense(CLASSES, in_units=0 if deferred else 8))
    return net


def _all_values(net):
    """Every parameter's value on every context (all rows of a row_sparse weight)."""
    values = {}
    for name, p in net.collect_params().items():
        if p._stype == 'row_sparse':
            data = p.list_row_sparse_data(mx.nd.arange(p.shape[0], dtype='int64'))
        else:
            data = p.list_data()
        values[name] = [d.asnumpy() for d in data]
    return values


def _draws(contexts):
    """A few numbers from each of the caller's generators: MXNet's on every context (sampling
    and a Dropout mask), NumPy's and Python's."""
    mxnet_draws = []
    for c in contexts:
        mxnet_draws.append(mx.nd.random.uniform(shape=(4,), ctx=c).asnumpy())
        with autograd.train_mode():
            mxnet_draws.append(mx.nd.Dropout(mx.nd.ones((16,), ctx=c), p=0.5).asnumpy())
    return [x.tolist() for x in mxnet_draws] + [np.random.rand(3).tolist(), random.random()]


def _seed_all(seed):
    mx.random.seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _search(net, kind, contexts):
    return search_step_size(net, _loader(kind), gluon.loss.SoftmaxCrossEntropyLoss(), 3,
                            step_sizes=(0.01, 0.1), ctx=contexts)


CONTEXTS = {'cpu': [mx.cpu(0)], 'two_cpus': [mx.cpu(0), mx.cpu(1)]}


@pytest.mark.parametrize('kind', ['dense', 'sparse'])
@pytest.mark.parametrize('where', list(CONTEXTS))
def test_the_callers_random_numbers_after_the_search_are_those_without_it(kind, where):
    """Issue 25 item 1: the search reseeded MXNet's global generator to a fixed value (and its
    loader's shuffling moved NumPy's), so every caller seed drew the same numbers after it.
    Now the same seed draws what it draws without the search, and two seeds differ. Fails on
    eee91f7 (MXNet's draws after the search were the same for both seeds)."""
    contexts = CONTEXTS[where]
    after = {}
    net = _model(kind)
    net.initialize(mx.init.Xavier(), ctx=contexts)
    if kind == 'sparse':   # a row_sparse weight is read through its Trainer
        gluon.Trainer(net.collect_params(), 'sgd')
    for seed in (1, 2):
        _seed_all(seed)
        without = _draws(contexts)
        _seed_all(seed)
        _search(net, kind, contexts)
        after[seed] = _draws(contexts)
        assert after[seed] == without, 'the search changed the caller\'s random numbers'
    assert after[1] != after[2]


def _train(net, trainer, batches, steps, contexts):
    for _ in range(steps):
        x, y = next(batches)
        xs = gluon.utils.split_and_load(x, contexts)
        ys = gluon.utils.split_and_load(y, contexts)
        with autograd.record():
            losses = [gluon.loss.SoftmaxCrossEntropyLoss()(net(a), b) for a, b in zip(xs, ys)]
        autograd.backward(losses)
        trainer.step(x.shape[0])


def _epochs(loader):
    while True:
        yield from loader


TRAINERS = {  # kind, contexts, Trainer's kvstore arguments
    'dense': ('dense', 'cpu', {}),
    'dense-device-kvstore': ('dense', 'two_cpus', dict(kvstore='device')),
    'dense-device-no-update-on-kvstore': ('dense', 'two_cpus',
                                          dict(kvstore='device', update_on_kvstore=False)),
    'sparse': ('sparse', 'cpu', {}),
    'sparse-device-kvstore': ('sparse', 'two_cpus', dict(kvstore='device')),
}


@pytest.mark.parametrize('setup', list(TRAINERS))
@pytest.mark.parametrize('optimizer', ['arsg', 'adam'])
def test_training_after_the_search_is_training_without_it(setup, optimizer):
    """Issue 25 item 2 and the whole contract: a run trains 2 steps, searches, trains 3 more
    (after rescaling a dense weight with set_data); its twin does the same without the search. Both
    end with identical weights, BatchNorm statistics and (by the steps' results) Trainer states,
    for dense and row_sparse weights, one or two contexts, updates on the kvstore or not.
    On eee91f7 the row_sparse setups fail (the search refused them, "needs initialized
    parameters") and so do the others (reseeded generator; the parameters kept the search's
    Trainer, so set_data did not reach the caller's kvstore)."""
    kind, where, kvstore_args = TRAINERS[setup]
    contexts = CONTEXTS[where]
    results = []
    for search in (False, True):
        _seed_all(3)
        net = _model(kind)
        net.initialize(mx.init.Xavier(), ctx=contexts)
        trainer = gluon.Trainer(net.collect_params(), optimizer, {'learning_rate': 0.01},
                                **kvstore_args)
        batches = _epochs(_loader(kind))
        _train(net, trainer, batches, 2, contexts)
        if search:
            before = _all_values(net)
            found = _search(net, kind, contexts)
            assert all(len(v) == 3 and all(map(math.isfinite, v))
                       for v in found.losses.values())
            after = _all_values(net)
            for name in before:
                for b, a in zip(before[name], after[name]):
                    np.testing.assert_array_equal(a, b, err_msg=name)
        if kind == 'dense':
            # set_data goes through the Trainer of the parameter (with a row_sparse weight,
            # MXNet would then re-initialize its kvstore from the rows last pulled).
            dense = net[-1].weight
            dense.set_data(dense.data() * 0.5)
        _train(net, trainer, batches, 3, contexts)
        results.append(_all_values(net))
    without, with_search = results      # the twins' parameter names differ: by position
    for (name, w), s in zip(without.items(), with_search.values()):
        for on_context_w, on_context_s in zip(w, s):
            np.testing.assert_array_equal(on_context_s, on_context_w, err_msg=name)


def test_a_row_sparse_weight_is_searched_like_a_dense_one():
    """The search on a SparseEmbedding (row_sparse weight, lazy update on a kvstore) finds the
    losses it finds on an Embedding with row_sparse gradients and the same weights."""
    found = {}
    for sparse in (True, False):
        w0 = np.random.default_rng(1).uniform(-0.5, 0.5, size=(VOCAB, 4)).astype(np.float32)
        net = gluon.nn.Sequential()
        net.add(gluon.contrib.nn.SparseEmbedding(VOCAB, 4) if sparse
                else gluon.nn.Embedding(VOCAB, 4, sparse_grad=True), gluon.nn.Dense(CLASSES))
        net.initialize(mx.init.Constant(0.1))
        net[0].initialize(mx.init.Constant(mx.nd.array(w0)), force_reinit=True)
        x, y = _dataset('sparse')[:]
        batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, len(x), 8)]
        found[sparse] = search_step_size(net, batches, gluon.loss.SoftmaxCrossEntropyLoss(), 6,
                                         step_sizes=(0.01, 0.1))
    assert found[True].best == found[False].best
    for a in (0.01, 0.1):
        assert found[True].losses[a] == pytest.approx(found[False].losses[a], rel=1e-5)


@pytest.mark.parametrize('kind', ['dense', 'sparse'])
def test_deferred_shapes_are_completed_by_one_forward_pass_in_the_callers_stream(kind):
    """Issue 24 item 6: on a network with deferred initialization the search failed until one
    forward pass. It now makes that pass itself (prediction mode, the caller's generator): the
    result, the initialized weights and the caller's numbers afterwards are those of a caller
    who ran the pass first. Fails on eee91f7 ("run one forward pass ... first")."""
    runs = []
    for first_pass in (True, False):
        _seed_all(4)
        x, _ = next(iter(_loader(kind)))
        net = _model(kind, deferred=True)
        net.initialize(mx.init.Xavier())
        if kind == 'sparse':
            gluon.Trainer(net.collect_params(), 'sgd')
        if first_pass:
            net(x)
        found = _search(net, kind, [mx.cpu()])
        runs.append((found.losses, list(_all_values(net).values()), _draws([mx.cpu()])))
    (losses, values, draws), (losses_2, values_2, draws_2) = runs
    assert losses_2 == losses and draws_2 == draws
    for v, v2 in zip(values, values_2):
        np.testing.assert_array_equal(v2[0], v[0])


def _weights_and_grads(net):
    return [(p.data().asnumpy(), p.grad().asnumpy() if p.grad_req != 'null' else None)
            for p in net.collect_params().values()]


def _assert_same(before, after):
    for (w, g), (w2, g2) in zip(before, after):
        np.testing.assert_array_equal(w2, w)
        if g is not None:
            np.testing.assert_array_equal(g2, g)


def test_accumulated_gradients_are_restored_and_do_not_leak_into_the_search():
    """With grad_req='add' the caller's accumulated gradients come back unchanged, and each
    search step uses one minibatch's gradient (as with grad_req='write')."""
    batches, w0 = _problem(3)
    found = {}
    for req in ('write', 'add'):
        net = _net(w0)
        net.collect_params().setattr('grad_req', req)
        x, y = (mx.nd.array(a) for a in batches[0])
        for _ in range(2):
            with autograd.record():
                loss = gluon.loss.L2Loss()(net(x), y)
            loss.backward()
        before = _weights_and_grads(net)
        found[req] = search_step_size(net, batches, gluon.loss.L2Loss(), 6,
                                      step_sizes=(0.01, 0.05))
        _assert_same(before, _weights_and_grads(net))
    assert found['add'].losses == found['write'].losses


class _Failing(gluon.loss.L2Loss):
    """The loss, raising ``error`` on its ``after``-th call (sleeping ``pause`` s per call)."""

    def __init__(self, after, error, pause=0.0):
        super().__init__()
        self.calls, self.after, self.error, self.pause = 0, after, error, pause

    def forward(self, *args):
        self.calls += 1
        time.sleep(self.pause)
        if self.calls == self.after:
            raise self.error
        return super().forward(*args)


def test_an_error_in_the_search_reaches_the_caller_with_everything_restored():
    batches, w0 = _problem(4)
    net = _net(w0)
    before = _weights_and_grads(net)
    _seed_all(5)
    without = _draws([mx.cpu()])
    _seed_all(5)
    with pytest.raises(ZeroDivisionError, match='in the loss'):
        search_step_size(net, batches, _Failing(12, ZeroDivisionError('in the loss')), 8,
                         step_sizes=(0.01, 0.02))
    _assert_same(before, _weights_and_grads(net))
    assert _draws([mx.cpu()]) == without


def test_an_interrupt_stops_the_search_and_restores_everything():
    """Ctrl-C while the search trains (in its own thread): the training stops after the
    minibatch in progress, the network is restored, and the KeyboardInterrupt goes on."""
    batches, w0 = _problem(5)
    net = _net(w0)
    before = _weights_and_grads(net)
    loss = _Failing(None, None, pause=0.02)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            search_step_size(net, batches, loss, 200, step_sizes=(0.01, 0.02))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    calls = loss.calls
    assert 0 < calls < 400
    time.sleep(0.2)
    assert loss.calls == calls                   # nothing trains any more
    assert not [t for t in threading.enumerate() if t.name.startswith('namsg-') and t.is_alive()]
    _assert_same(before, _weights_and_grads(net))
