"""What an update call keeps for the next call over the same arrays (namsg._states.remembered:
the states split from their counts and their layout checked, loaded states checked, the master
copies taken apart, the counts' places in their buffers, whether the arrays take the fused
operator): it must be found again whenever what it was found from changes.

Each scenario runs twice, as it is and with nothing remembered between calls (every call finds
everything again, as namsg did before it kept anything), and must end in the same weights,
states, update counts, errors and warnings, bit for bit; each also checks what it changes took
effect. Both ARSG paths, through MXNet's Updater and gluon.Trainer."""

import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import namsg
import namsg._base
import namsg._states

SHAPES = [(4, 3), (3,), (2, 2, 2)]
FUSED = [False, True]
FUSED_IDS = ['ndarray', 'fused']


@pytest.fixture(autouse=True)
def _fused_available(request):
    if request.node.callspec.params.get('fused') and not namsg.kernels.load():
        pytest.skip('the fused operator is not available: %s' % namsg.kernels._state['error'])


def _forgetting(monkeypatch):
    """Nothing remembered between calls."""
    for module in (namsg._states, namsg._base):
        monkeypatch.setattr(module, 'remembered', lambda optimizer, key: None)


def _leaves(state):
    """Every NDArray of a state, the counts and names included."""
    if isinstance(state, (tuple, list)):
        return [leaf for part in state for leaf in _leaves(part)]
    return [state] if isinstance(state, mx.nd.NDArray) else []


def _snapshot(updater, weights):
    optimizer = updater.optimizer
    return dict(weights=[w.asnumpy() for w in weights],
                states={index: [a.asnumpy() for a in _leaves(state)]
                        for index, state in updater.states.items()},
                counts=dict(optimizer._index_update_count), num_update=optimizer.num_update)


def _assert_same(a, b, where='snapshot'):
    """Equal bit for bit (NaN for NaN), through dicts and lists."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], '%s[%r]' % (where, key))
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for j, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, '%s[%d]' % (where, j))
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, where


def _problem(seed, shapes=SHAPES, dtype='float32'):
    rng = np.random.default_rng(seed)
    return ([mx.nd.array(rng.uniform(-0.5, 0.5, size=s), dtype=dtype) for s in shapes],
            [mx.nd.array(rng.normal(size=s), dtype=dtype) for s in shapes])


def _updater(fused, **kwargs):
    kwargs = dict(dict(learning_rate=0.01, wd=0.01), **kwargs)
    return mx.optimizer.get_updater(namsg.ARSG(fused=fused, **kwargs))


def _counts_in_states(updater):
    """Each state's count (its ``t``) against the optimizer's count of its parameter."""
    for index, state in updater.states.items():
        count = namsg._states.split_count(state)[1]
        if count is None:           # (float32 master copy, state)
            count = namsg._states.split_count(state[1])[1]
        t = count[0].asscalar()
        assert t == updater.optimizer._index_update_count[index], index


# -- the scenarios: each returns its snapshot ---------------------------------------------------

def scheduler(fused):
    """A step-size schedule that changes at every update."""
    schedule = mx.lr_scheduler.FactorScheduler(step=1, factor=0.5, base_lr=0.04)
    updater = _updater(fused, learning_rate=None, lr_scheduler=schedule)
    weights, grads = _problem(1)
    indices = list(range(len(weights)))
    for _ in range(4):
        before = [w.asnumpy() for w in weights]
        updater(indices, grads, weights)
        lr = updater.optimizer.lr_scheduler(updater.optimizer.num_update)
        assert updater.optimizer._get_lrs(indices) == [lr] * len(indices)
        assert all((w.asnumpy() != b).any() for w, b in zip(weights, before))
    return _snapshot(updater, weights)


def multipliers(fused):
    """lr_mult / wd_mult and the step size changed between calls over the same arrays."""
    updater = _updater(fused)
    optimizer = updater.optimizer
    weights, grads = _problem(2)
    indices = list(range(len(weights)))
    updater(indices, grads, weights)
    optimizer.set_lr_mult({0: 0.0})
    frozen = weights[0].asnumpy()
    updater(indices, grads, weights)
    np.testing.assert_array_equal(weights[0].asnumpy(), frozen)
    assert (weights[1].asnumpy() != _problem(2)[0][1].asnumpy()).all()
    optimizer.set_lr_mult({})
    optimizer.set_wd_mult({1: 4.0})
    assert optimizer._get_wds(indices) == [0.01, 0.04, 0.01]
    updater(indices, grads, weights)
    assert (weights[0].asnumpy() != frozen).all()
    optimizer.set_learning_rate(0.0)
    still = [w.asnumpy() for w in weights]
    updater(indices, grads, weights)
    for w, s in zip(weights, still):
        np.testing.assert_array_equal(w.asnumpy(), s)
    optimizer.set_learning_rate(0.02)
    updater(indices, grads, weights)
    return _snapshot(updater, weights)


def mu_changed(fused):
    """mu set between calls (as the observation boost does)."""
    updater = _updater(fused)
    weights, grads = _problem(3)
    indices = list(range(len(weights)))
    for mu in (0.1, 0.1, 0.5, 0.0, 0.9):
        updater.optimizer.mu = mu
        updater(indices, grads, weights)
    other = _updater(fused)
    weights_b = [w.copy() for w in _problem(3)[0]]
    for mu in (0.1, 0.1, 0.1, 0.1, 0.1):
        other.optimizer.mu = mu
        other(indices, grads, weights_b)
    assert all((a.asnumpy() != b.asnumpy()).any() for a, b in zip(weights, weights_b))
    return _snapshot(updater, weights)


def states_loaded(fused):
    """States loaded into an Updater that has run (its memo made for its own states): the
    run continues exactly as the one the states were saved from, counts included."""
    weights, grads = _problem(4)
    indices = list(range(len(weights)))
    source = _updater(fused)
    source_weights = [w.copy() for w in weights]
    for _ in range(3):
        source(indices, grads, source_weights)
    saved = source.get_states(dump_optimizer=False)
    target = _updater(fused)
    target_weights = [w.copy() for w in _problem(5)[0]]
    for _ in range(2):
        target(indices, _problem(5)[1], target_weights)
    target.set_states(saved)
    for w, s in zip(target_weights, source_weights):
        w[:] = s
    source(indices, grads, source_weights)
    target(indices, grads, target_weights)
    assert target.optimizer._index_update_count == {0: 4, 1: 4, 2: 4}
    _counts_in_states(target)
    for a, b in zip(target_weights, source_weights):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    target(indices, grads, target_weights)
    _counts_in_states(target)
    return _snapshot(target, target_weights)


def wrong_states_loaded(fused):
    """States of other shapes, then of another preconditioner's layout, loaded after calls
    over the Updater's own: refused, with nothing changed."""
    weights, grads = _problem(6)
    indices = list(range(len(weights)))
    updater = _updater(fused)
    updater(indices, grads, weights)
    updater(indices, grads, weights)
    good = updater.get_states(dump_optimizer=False)
    other = _updater(fused)
    other(indices, _problem(6, [(2,), (5,), (1, 2)])[1], _problem(6, [(2,), (5,), (1, 2)])[0])
    updater.set_states(other.get_states(dump_optimizer=False))
    before = [w.asnumpy() for w in weights]
    with pytest.raises(ValueError, match='do not fit the parameters'):
        updater(indices, grads, weights)
    adam = mx.optimizer.get_updater(namsg.ARSG(preconditioner='adam', fused=fused))
    adam(indices, grads, [w.copy() for w in weights])
    updater.set_states(adam.get_states(dump_optimizer=False))
    with pytest.raises(ValueError, match="preconditioner='amsgrad'.* was given a state of 2"):
        updater(indices, grads, weights)
    for w, b in zip(weights, before):
        np.testing.assert_array_equal(w.asnumpy(), b)
    updater.set_states(good)
    updater(indices, grads, weights)
    return _snapshot(updater, weights)


def preconditioner_changed(fused):
    """An optimizer that never made states (it was given loaded ones) may change its
    preconditioner; the states it has used since are then of the wrong layout."""
    weights, grads = _problem(7)
    indices = list(range(len(weights)))
    source = _updater(fused)
    source(indices, grads, [w.copy() for w in weights])
    updater = _updater(fused)
    updater.set_states(source.get_states(dump_optimizer=False))
    updater(indices, grads, weights)
    updater(indices, grads, weights)
    updater.optimizer.preconditioner = 'adam'
    with pytest.raises(ValueError, match="preconditioner='adam'.* was given a state of 3"):
        updater(indices, grads, weights)
    updater.optimizer.preconditioner = 'amsgrad'
    updater(indices, grads, weights)
    return _snapshot(updater, weights)


def new_parameter(fused):
    """Calls over a growing list of parameters, and over some of them alone: counts that
    differ between the parameters of one call are all written."""
    updater = _updater(fused)
    weights, grads = _problem(8)
    updater([0, 1], grads[:2], weights[:2])
    updater([0, 1], grads[:2], weights[:2])
    updater([0, 1, 2], grads, weights)
    assert updater.optimizer._index_update_count == {0: 3, 1: 3, 2: 1}
    _counts_in_states(updater)
    updater([0, 1, 2], grads, weights)
    updater([2], grads[2:], weights[2:])
    updater([0, 1, 2], grads, weights)
    assert updater.optimizer._index_update_count == {0: 5, 1: 5, 2: 4}
    assert updater.optimizer.num_update == 5
    _counts_in_states(updater)
    return _snapshot(updater, weights)


def arrays_replaced(fused):
    """The same states with other weight and gradient objects: a row_sparse gradient after
    dense ones takes the lazy update (only its rows change), a weight replaced by a copy is
    the one updated."""
    updater = _updater(fused)
    weights, grads = _problem(9, [(4, 3), (5, 2)])
    indices = [0, 1]
    updater(indices, grads, weights)
    updater(indices, grads, weights)
    # Rows 1 and 3 have no gradient: they stay as they are.
    sparse = [mx.nd.sparse.row_sparse_array((g.asnumpy()[[0, 2]], [0, 2]), shape=g.shape)
              for g in grads]
    before = [w.asnumpy() for w in weights]
    updater(indices, sparse, weights)
    for w, b in zip(weights, before):
        np.testing.assert_array_equal(w.asnumpy()[[1, 3]], b[[1, 3]])
        assert (w.asnumpy()[[0, 2]] != b[[0, 2]]).all()
    copies = [w.copy() for w in weights]
    updater(indices, grads, copies)
    for w, c in zip(weights, copies):
        assert (w.asnumpy() != c.asnumpy()).all()
    updater(indices, grads, copies)
    return _snapshot(updater, copies)


def multi_precision(fused):
    """float16 weights with their float32 master copies, and float32 weights, in turns."""
    updater = _updater(fused, multi_precision=True)
    half, half_grads = _problem(10, dtype='float16')
    full, full_grads = _problem(11, [(3, 3)])
    for _ in range(3):
        updater([0, 1, 2], half_grads, half)
        updater([3], full_grads, full)
    _counts_in_states(updater)
    # States loaded: the master copies and states taken apart are the new ones.
    updater.set_states(updater.get_states(dump_optimizer=False))
    for _ in range(2):
        updater([0, 1, 2], half_grads, half)
        updater([3], full_grads, full)
    _counts_in_states(updater)
    for index, weight in enumerate(half):
        master = updater.states[index][0]
        np.testing.assert_array_equal(master.astype('float16').asnumpy(), weight.asnumpy())
    return _snapshot(updater, half + full)


def nonfinite_skipped(fused):
    """skip_nonfinite_grad: calls over the parameters whose gradient is finite."""
    updater = _updater(fused, skip_nonfinite_grad=True)
    weights, grads = _problem(12)
    indices = list(range(len(weights)))
    poisoned = [g.copy() for g in grads]
    poisoned[1][0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        for step_grads in (grads, poisoned, grads, poisoned, grads):
            updater(indices, step_grads, weights)
    assert updater.optimizer._index_update_count == {0: 5, 1: 3, 2: 5}
    _counts_in_states(updater)
    return _snapshot(updater, weights)


def trainer_lr_mult(fused):
    """gluon: Parameter.lr_mult changed and trainer.set_learning_rate between steps."""
    mx.random.seed(0)
    net = gluon.nn.HybridSequential(prefix='net_')
    with net.name_scope():
        net.add(gluon.nn.Dense(4, in_units=3), gluon.nn.Dense(2, in_units=4))
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), 'arsg', dict(learning_rate=0.01, fused=fused))
    x = mx.nd.array(np.random.default_rng(13).normal(size=(5, 3)))
    params = list(net.collect_params().values())

    def step():
        with autograd.record():
            loss = (net(x) ** 2).sum()
        loss.backward()
        trainer.step(5)
    step()
    step()
    params[0].lr_mult = 0.0
    frozen = params[0].data().asnumpy()
    moving = params[2].data().asnumpy()
    step()
    np.testing.assert_array_equal(params[0].data().asnumpy(), frozen)
    assert (params[2].data().asnumpy() != moving).any()
    params[0].lr_mult = 1.0
    trainer.set_learning_rate(0.02)
    step()
    assert (params[0].data().asnumpy() != frozen).any()
    updater = trainer._updaters[0]
    _counts_in_states(updater)
    return _snapshot(updater, [p.data() for p in params])


SCENARIOS = [scheduler, multipliers, mu_changed, states_loaded, wrong_states_loaded,
             preconditioner_changed, new_parameter, arrays_replaced, multi_precision,
             nonfinite_skipped, trainer_lr_mult]


@pytest.mark.parametrize('fused', FUSED, ids=FUSED_IDS)
@pytest.mark.parametrize('scenario', SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_what_a_call_remembers_follows_every_change(monkeypatch, scenario, fused):
    remembering = scenario(fused)
    _forgetting(monkeypatch)
    _assert_same(remembering, scenario(fused))


@pytest.mark.parametrize('fused', FUSED, ids=FUSED_IDS)
def test_calls_over_the_same_arrays_reuse_what_they_found(monkeypatch, fused):
    """The work the memo saves is not done again: no state is split from its count, checked
    against its parameter or its layout, and no count is taken in again, at the second call
    over the same arrays; each happens again for states loaded in between."""
    updater = _updater(fused)
    weights, grads = _problem(14)
    indices = list(range(len(weights)))
    updater(indices, grads, weights)
    seen = []
    for module, name in ((namsg._base, 'split_count'), (namsg._base, 'resume_counts'),
                         (namsg._states, '_adopt')):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _name=name, _f=original, **k:
                            seen.append(_name) or _f(*a, **k))
    layouts = []
    monkeypatch.setattr(type(updater.optimizer), '_check_layout',
                        lambda self, state: layouts.append(state))
    updater(indices, grads, weights)
    updater(indices, grads, weights)
    assert seen == [] and layouts == []
    updater.set_states(updater.get_states(dump_optimizer=False))
    updater(indices, grads, weights)
    assert seen.count('split_count') == 3 and seen.count('_adopt') == 1
    assert len(layouts) == 3
    _counts_in_states(updater)
