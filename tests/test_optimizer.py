"""The optimizer objects themselves: registration, defaults, the legacy API, argument checks,
state layout and context, pickling, sparse gradients, no host round trips, properties."""

import inspect
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import namsg
from namsg import reference as ref
from cases import CASES_BY_ID, PATH_IDS, PATHS
from harness import apply_steps, make_problem, make_updater, run_mxnet


def test_names_are_registered():
    assert isinstance(mx.optimizer.create('arsg'), namsg.ARSG)
    assert isinstance(mx.optimizer.create('ARSG'), namsg.ARSG)
    assert isinstance(mx.optimizer.create('rsg'), namsg.RSG)


def test_defaults_are_the_papers():
    opt = namsg.ARSG()
    assert (opt.beta1, opt.beta2, opt.mu, opt.epsilon) == (0.999, 0.99, 0.1, 1e-8)
    assert opt.preconditioner == 'amsgrad'
    assert opt.lower_bound is None and opt.upper_bound is None
    rsg = namsg.RSG()
    assert (rsg.beta, rsg.mu, rsg.preconditioner) == (0.999, 0.1, 'none')


def test_legacy_constructor_and_set_obs_fac_mu():
    """The paper's own class: Arsg(learning_rate, beta1, beta2, epsilon, mu, **kwargs)."""
    opt = namsg.Arsg(0.05, 0.9, 0.999, 1e-3, 0.2, wd=1e-4)
    assert (opt.lr, opt.beta1, opt.beta2, opt.epsilon, opt.mu, opt.wd) == \
        (0.05, 0.9, 0.999, 1e-3, 0.2, 1e-4)
    opt.set_obs_fac_mu(0.4)
    assert opt.mu == 0.4


BAD_ARGUMENTS = [
    ('arsg', dict(beta1=1.0), 'beta1'),
    ('arsg', dict(beta1=-0.1), 'beta1'),
    ('arsg', dict(beta2=1.5), 'beta2'),
    ('arsg', dict(mu=1.0), 'mu'),
    ('arsg', dict(mu=-0.01), 'mu'),
    ('arsg', dict(mu=float('nan')), 'mu'),
    ('arsg', dict(epsilon=0.0), 'epsilon'),
    ('arsg', dict(epsilon=-1e-8), 'epsilon'),
    ('arsg', dict(learning_rate=-0.1), 'learning_rate'),
    ('arsg', dict(learning_rate=float('inf')), 'learning_rate'),
    ('arsg', dict(preconditioner='adagrad'), 'preconditioner'),
    ('arsg', dict(lower_bound=1.0, upper_bound=0.0), 'lower_bound'),
    ('arsg', dict(upper_bound='1'), 'upper_bound'),
    ('rsg', dict(beta=1.0), r'^beta=1\.0 is out of range'),
    ('rsg', dict(beta2=0.9), 'beta2'),
    ('rsg', dict(mu=2.0), 'mu'),
    # Of the wrong type: named as such, not as "out of range"; lazy_update takes no truthy str.
    ('arsg', dict(learning_rate='0.01'), r"^learning_rate='0\.01' is a str, not a number"),
    ('arsg', dict(beta1='0.9'), r"^beta1='0\.9' is a str, not a number"),
    ('arsg', dict(lazy_update='no'), r"^lazy_update='no' is a str: give True or False"),
    ('amsgrad', dict(lazy_update=1), '^lazy_update=1 is an int: give True or False'),
    ('arsg', dict(lower_bound=float('nan')), r'^lower_bound=nan is not a bound'),
    # MXNet's own settings, which reached the update unchecked: nan weights, or a TypeError in
    # the first step.
    ('arsg', dict(wd=float('nan')), r'^wd=nan is out of range: it must be a finite number >= 0'),
    ('arsg', dict(wd=-1.0), r'^wd=-1\.0 is out of range'),
    ('rsg', dict(wd='0.1'), r"^wd='0\.1' is a str, not a number"),
    ('arsg', dict(rescale_grad=0.0), r'^rescale_grad=0\.0 is out of range: .* > 0'),
    ('amsgrad', dict(rescale_grad=float('inf')), '^rescale_grad=inf is out of range'),
    ('arsg', dict(clip_gradient='a'), r"^clip_gradient='a' is a str, not a number"),
    ('radam', dict(clip_gradient=float('nan')), '^clip_gradient=nan is not a threshold'),
    ('ranger', dict(wd=-0.1), '^wd=-0.1 is out of range'),
    ('amsgrad', dict(beta2=1.0), 'beta2'),
    ('amsgrad', dict(epsilon=0.0), 'epsilon'),
    ('radam', dict(beta1=1.0), 'beta1'),
    ('radam', dict(rectify_threshold=3), 'rectify_threshold'),
    ('radam', dict(rectify_threshold='5'), "rectify_threshold='5' is a str"),
    ('ranger', dict(epsilon=-1.0), 'epsilon'),
    ('ranger', dict(k=0), 'k'),
    ('ranger', dict(alpha=0.0), 'alpha'),
    ('ranger', dict(lazy_update='no'), 'lazy_update'),
]


@pytest.mark.parametrize('name,kwargs,parameter', BAD_ARGUMENTS,
                         ids=['%s-%s' % (n, '-'.join(map(str, k.items()))) for n, k, _ in
                              BAD_ARGUMENTS])
def test_invalid_arguments_raise_value_error_naming_them(name, kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        mx.optimizer.create(name, **kwargs)


# (optimizer, its extra arguments): every optimizer of namsg with an epsilon, on each path.
WITH_EPSILON = [('arsg', {'fused': False}), ('arsg', {'fused': True}),
                ('arsg', {'preconditioner': 'adam', 'fused': False}),
                ('arsg', {'preconditioner': 'adam', 'fused': True}),
                ('amsgrad', {}), ('radam', {'rectify_threshold': 4}), ('ranger', {'k': 1})]


@pytest.mark.parametrize('name,kwargs', WITH_EPSILON,
                         ids=['%s-%s' % (n, '-'.join(map(str, k.values()))) for n, k in
                              WITH_EPSILON])
def test_an_epsilon_that_float32_cannot_hold_is_refused(name, kwargs):
    """The states and MXNet's operators hold epsilon in float32. Before the fix a positive
    epsilon below float32's smallest normal number was taken: 1e-46 became 0 and turned every
    weight element with a zero gradient into NaN without a word (ARSG, AMSGrad), 1e-39 failed
    inside AMSGrad's update (where a kvstore callback only prints it); MXNet's adam refuses
    both in its operator. The smallest number float32 holds works, zero gradients included."""
    for bad in (1e-46, 1e-39, 1e39):
        with pytest.raises(ValueError, match=r'^epsilon=%s is out of range: it must be a '
                                             r'number in \[1\.17549e-38, 3\.40282e\+38\]'
                                             % re.escape(repr(bad))):
            mx.optimizer.create(name, epsilon=bad, **kwargs)
        opt = mx.optimizer.create(name, **kwargs)
        with pytest.raises(ValueError, match='^epsilon='):
            opt.epsilon = bad
    tiny = float(np.finfo(np.float32).tiny)
    updater = mx.optimizer.get_updater(mx.optimizer.create(name, epsilon=tiny, **kwargs))
    weight = mx.nd.ones((3,))
    for _ in range(6):
        updater(0, mx.nd.array([0.0, 1e-3, 1.0]), weight)
    assert np.isfinite(weight.asnumpy()).all()
    assert weight.asnumpy()[0] == 1.0


def test_invalid_mu_and_lr_set_later_are_refused():
    opt = namsg.ARSG()
    with pytest.raises(ValueError, match='mu'):
        opt.mu = 1.0
    with pytest.raises(ValueError, match='mu'):
        opt.set_obs_fac_mu(-1)
    with pytest.raises(ValueError, match='learning_rate'):
        opt.set_learning_rate(-1.0)
    assert opt.mu == 0.1


# Each hyper-parameter assigned after creation, as `trainer.optimizer.beta1 = 1.0` does: held
# to the constructor's check. (optimizer, attribute, refused value, the name in the message)
BAD_ASSIGNMENTS = [
    (opt, attribute, value, name)
    for opt in ('arsg', 'amsgrad', 'radam', 'ranger')
    for attribute, value, name in [('beta1', 1.0, 'beta1'), ('beta2', -0.5, 'beta2'),
                                   ('epsilon', -1.0, 'epsilon'), ('epsilon', '1e-8', 'epsilon'),
                                   ('lazy_update', 'no', 'lazy_update'),
                                   ('lr', 'x', 'learning_rate'), ('wd', -1.0, 'wd'),
                                   ('clip_gradient', 'a', 'clip_gradient')]
] + [
    ('rsg', 'beta1', 1.0, 'beta='),
    ('arsg', 'mu', 1.5, 'mu'),
    ('arsg', 'preconditioner', 'adagrad', 'preconditioner'),
    ('arsg', 'fused', 'yes', 'fused'),
    ('arsg', 'fused', 1, 'fused'),
    ('arsg', 'upper_bound', 'x', 'upper_bound'),
    ('arsg', 'lower_bound', float('nan'), 'lower_bound'),
    ('radam', 'rectify_threshold', 2.0, 'rectify_threshold'),
    ('ranger', 'k', 1.5, 'k'),
    ('ranger', 'alpha', 2.0, 'alpha'),
    ('ranger', 'rectify_threshold', 1.0, 'rectify_threshold'),
]


@pytest.mark.parametrize('name,attribute,value,message', BAD_ASSIGNMENTS,
                         ids=['%s-%s=%r' % a[:3] for a in BAD_ASSIGNMENTS])
def test_hyper_parameters_assigned_later_are_checked_as_in_the_constructor(name, attribute,
                                                                           value, message):
    opt = mx.optimizer.create(name)
    before = getattr(opt, attribute)
    with pytest.raises(ValueError, match=message):
        setattr(opt, attribute, value)
    assert getattr(opt, attribute) == before


@pytest.mark.parametrize('fused', [False, True], ids=['ndarray', 'fused'])
def test_the_preconditioner_cannot_change_under_existing_states(fused):
    """A state's layout follows the preconditioner it was made for ('amsgrad': m, v, vhat;
    'adam': m, v): a changed preconditioner read the other's arrays, or failed in unpacking."""
    weight, grad = mx.nd.ones((3, 2)), mx.nd.ones((3, 2))
    made = mx.optimizer.get_updater(namsg.ARSG(preconditioner='adam', fused=fused))
    made(0, grad, weight)
    with pytest.raises(ValueError, match="preconditioner='amsgrad': this ARSG has made states "
                                         "for preconditioner='adam'.*create a new optimizer"):
        made.optimizer.preconditioner = 'amsgrad'
    assert made.optimizer.preconditioner == 'adam'
    made.optimizer.preconditioner = 'adam'           # unchanged: allowed

    # States loaded into another optimizer, as Module.load_optimizer_states does.
    other = mx.optimizer.get_updater(namsg.ARSG(preconditioner='amsgrad', fused=fused))
    other.set_states(made.get_states(dump_optimizer=False))
    before = weight.asnumpy()
    with pytest.raises(ValueError, match=r"ARSG\(preconditioner='amsgrad'\) was given a state "
                                         "of 2 arrays, the layout of preconditioner='adam'"):
        other(0, grad, weight)
        weight.wait_to_read()
    np.testing.assert_array_equal(weight.asnumpy(), before)

    fresh = namsg.ARSG(preconditioner='adam')
    fresh.preconditioner = 'none'                     # no states yet: allowed
    assert fresh.preconditioner == 'none'


def test_a_box_assigned_later_must_not_be_empty():
    opt = namsg.ARSG(lower_bound=-1.0, upper_bound=1.0)
    with pytest.raises(ValueError, match='lower_bound=2.0 is above upper_bound=1.0'):
        opt.lower_bound = 2.0
    opt.upper_bound = 3.0
    opt.lower_bound = 2.0
    assert (opt.lower_bound, opt.upper_bound) == (2.0, 3.0)


def test_learning_rate_none_follows_mxnets_optimizer():
    """MXNet's Optimizer turns learning_rate=None without an lr_scheduler into 0.01 (with one,
    the scheduler's base_lr); set_learning_rate(None) would leave no step size: refused. MXNet
    1.5's Optimizer left lr (and the scheduler's base_lr) None: the 1.6 rule holds there too.
    The 0.01 is not the optimizer's own default (ARSG's 0.001): said in a warning, which MXNet
    does not give (a None from a configuration file trained at ten times ARSG's default)."""
    for name, inner in [('arsg', {}), ('rsg', {}), ('amsgrad', {}), ('radam', {}),
                        ('ranger', {}), ('lookahead', {'optimizer': 'arsg'})]:
        if name == 'rsg':       # its own default is 0.01: nothing to say
            with warnings.catch_warnings():
                warnings.simplefilter('error')
                assert mx.optimizer.create(name, learning_rate=None).learning_rate == 0.01
        else:
            with pytest.warns(UserWarning, match=r"learning_rate=None and no lr_scheduler: the "
                                                 r"step size is 0.01, .* not \w+'s own default "
                                                 r"0.001"):
                assert mx.optimizer.create(name, learning_rate=None,
                                           **inner).learning_rate == 0.01
        schedule = mx.lr_scheduler.FactorScheduler(10, base_lr=0.3)
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            assert mx.optimizer.create(name, learning_rate=None, lr_scheduler=schedule,
                                       **inner).learning_rate == 0.3
            mx.optimizer.create(name, **inner)
        opt = mx.optimizer.create(name, learning_rate=0.002, **inner)
        with pytest.raises(ValueError, match='learning_rate=None without an lr_scheduler'):
            opt.set_learning_rate(None)
        assert opt.learning_rate == 0.002


def test_good_values_assigned_later_take_effect():
    opt = namsg.Ranger()
    opt.beta1, opt.epsilon, opt.k, opt.alpha, opt.lazy_update = 0.5, 1e-3, 3, 1, False
    assert (opt.beta1, opt.epsilon, opt.k, opt.alpha, opt.lazy_update) == (0.5, 1e-3, 3, 1.0,
                                                                           False)
    rsg = namsg.RSG()
    rsg.beta1 = 0.9
    assert rsg.beta == 0.9


@pytest.mark.parametrize('preconditioner,slots', [('amsgrad', 3), ('adam', 2), ('none', 1)])
def test_state_is_a_plain_tuple_on_the_weights_context(preconditioner, slots):
    opt = namsg.ARSG(preconditioner=preconditioner, epsilon=1e-3)
    weight = mx.nd.ones((4, 2), ctx=mx.cpu(1), dtype='float64')
    state = opt.create_state_multi_precision(0, weight)
    # The arrays, then the update count and the parameter's name that are saved with them.
    assert type(state) is tuple and len(state) == slots + 1
    assert all(s.context == mx.cpu(1) and s.dtype == np.float64 for s in state[:slots])
    count, name = state[-1]
    assert count.context == name.context == mx.cpu(1)
    assert (count.dtype, count.shape, name.dtype, name.shape) == (np.int64, (1,), np.uint8, (128,))
    assert count.asscalar() == 0 and not name.asnumpy().any()
    np.testing.assert_array_equal(state[0].asnumpy(), 0)
    if preconditioner == 'amsgrad':
        np.testing.assert_array_equal(state[2].asnumpy(), 1e-3)


def test_multi_precision_state_is_master_copy_then_float32_state():
    opt = namsg.ARSG(multi_precision=True)
    state = opt.create_state_multi_precision(0, mx.nd.ones((3,), dtype='float16'))
    master, (*inner, (count, name)) = state
    assert master.dtype == np.float32 and all(s.dtype == np.float32 for s in inner)
    assert count.dtype == np.int64 and name.dtype == np.uint8


def test_the_parity_harness_fails_an_optimizer_that_writes_into_its_gradients():
    """Every parity run checks that the gradients come back as they went in (tests/harness.py's
    apply_steps); this is that check failing where it should."""
    case = CASES_BY_ID['rsg']
    weights, grads = make_problem(3, seed=1)
    updater = make_updater(case)
    update = updater.optimizer.update_multi_precision

    def update_and_write(index, weight, grad, state):
        update(index, weight, grad, state)
        (grad if isinstance(grad, (list, tuple)) else [grad])[-1][:] *= 2
    updater.optimizer.update_multi_precision = update_and_write
    ws = [mx.nd.array(w) for w in weights]
    with pytest.raises(AssertionError, match='step 1 wrote into the gradient of parameter %d'
                       % (len(ws) - 1)):
        apply_steps(updater, case, ws, grads)


@pytest.mark.parametrize('case_id', ['everything', 'rsg_mu_changed', 'amsgrad', 'radam',
                                     'ranger', 'lookahead_arsg'])
def test_pickle_round_trip_mid_run_continues_identically(case_id):
    """Dist kvstore servers receive the optimizer pickled; Trainer.save_states pickles it too."""
    case = CASES_BY_ID[case_id]
    weights, grads = make_problem(30, seed=5)
    expected, _ = run_mxnet(case, weights, grads, dtype='float64')

    updater = make_updater(case)
    ws = [mx.nd.array(w, dtype='float64') for w in weights]
    apply_steps(updater, case, ws, grads[:12])
    resumed = mx.optimizer.get_updater(pickle.loads(pickle.dumps(updater.optimizer)))
    assert type(resumed.optimizer) is type(updater.optimizer)
    resumed.set_states(updater.get_states(dump_optimizer=False))
    apply_steps(resumed, case, ws, grads[12:], first_step=13)
    for w, e in zip(ws, expected):
        np.testing.assert_array_equal(w.asnumpy(), e)


@pytest.mark.parametrize('multi_precision', [False, True], ids=['float64', 'float16-mp'])
@pytest.mark.parametrize('case,fused', PATHS, ids=PATH_IDS)
def test_states_saved_without_the_optimizer_continue_identically(case, fused, multi_precision):
    """Updater.get_states(dump_optimizer=False), which Module.save_optimizer_states and
    KVStore.save_optimizer_states write, set on a new optimizer's Updater mid-run: the run
    continues as if uninterrupted. The update counts used to restart at begin_num_update."""
    dtype = 'float16' if multi_precision else 'float64'
    weights, grads = make_problem(30, seed=7)
    expected, _ = run_mxnet(case, weights, grads, dtype=dtype, multi_precision=multi_precision,
                            fused=fused)

    updater = make_updater(case, multi_precision, fused)
    ws = [mx.nd.array(w, dtype=dtype) for w in weights]
    apply_steps(updater, case, ws, grads[:13])
    resumed = make_updater(case, multi_precision, fused)
    resumed.set_states(updater.get_states(dump_optimizer=False))
    apply_steps(resumed, case, ws, grads[13:], first_step=14)
    for w, e in zip(ws, expected):
        np.testing.assert_array_equal(w.asnumpy().astype(np.float64), e)


def _row_sparse(dense, rows):
    return mx.nd.sparse.row_sparse_array(
        (mx.nd.array(dense[rows], dtype='float64'), mx.nd.array(rows, dtype='int64')),
        shape=dense.shape, dtype='float64')


def test_row_sparse_gradient_lazy_update_touches_only_present_rows():
    rng = np.random.default_rng(6)
    w0 = rng.normal(size=(6, 3))
    weight = mx.nd.array(w0, dtype='float64')
    opt = namsg.ARSG(learning_rate=0.01, wd=0.01)
    state = opt.create_state(0, weight)
    x = {r: (w0[r], ref.arsg_init(w0[r], 1e-8)) for r in range(6)}
    for step in range(20):
        rows = sorted(rng.choice(6, size=3, replace=False))
        dense = rng.normal(size=w0.shape)
        opt.update(0, weight, _row_sparse(dense, rows), state)
        for r in rows:
            xr, sr = x[r]
            g = ref.mxnet_gradient(dense[r], xr, 1.0, 0.01)
            x[r] = ref.arsg_step(xr, sr, g, 0.01, 0.999, 0.99, 0.1, 1e-8)
    expected = np.stack([x[r][0] for r in range(6)])
    np.testing.assert_allclose(weight.asnumpy(), expected, rtol=1e-10)


def test_row_sparse_gradient_without_lazy_update_equals_dense_gradient():
    rng = np.random.default_rng(7)
    w0 = rng.normal(size=(5, 2))
    sparse_w, dense_w = (mx.nd.array(w0, dtype='float64') for _ in range(2))
    sparse_opt, dense_opt = (namsg.ARSG(lazy_update=False, wd=0.01) for _ in range(2))
    sparse_state = sparse_opt.create_state(0, sparse_w)
    dense_state = dense_opt.create_state(0, dense_w)
    for _ in range(10):
        dense = rng.normal(size=w0.shape)
        dense[[1, 3]] = 0.0
        sparse_opt.update(0, sparse_w, _row_sparse(dense, [0, 2, 4]), sparse_state)
        dense_opt.update(0, dense_w, mx.nd.array(dense, dtype='float64'), dense_state)
    np.testing.assert_allclose(sparse_w.asnumpy(), dense_w.asnumpy(), rtol=1e-12)


def test_embedding_with_sparse_grad_trains_through_trainer():
    net = mx.gluon.nn.Embedding(10, 4, sparse_grad=True)
    net.initialize(mx.init.Normal(0.1))
    trainer = mx.gluon.Trainer(net.collect_params(), 'arsg', {'learning_rate': 0.01})
    before = net.weight.data().asnumpy()
    tokens = mx.nd.array([1, 3, 3])
    with mx.autograd.record():
        loss = net(tokens).sum()
    loss.backward()
    trainer.step(1)
    changed = np.any(net.weight.data().asnumpy() != before, axis=1)
    assert list(np.flatnonzero(changed)) == [1, 3]


def test_update_makes_no_host_round_trip(monkeypatch):
    """The update path must stay asynchronous: no asnumpy / asscalar (it would serialize GPUs)."""
    def forbidden(*_):
        raise AssertionError('host round trip in the update path')
    case = CASES_BY_ID['everything']
    opt = mx.optimizer.create('arsg', multi_precision=True, **case.make_kwargs())
    updater = mx.optimizer.get_updater(opt)
    weights = [mx.nd.ones((3, 4), dtype=d) for d in ('float32', 'float16', 'float64')]
    grads = [mx.nd.ones((3, 4), dtype=d) for d in ('float32', 'float16', 'float64')]
    monkeypatch.setattr(mx.nd.NDArray, 'asnumpy', forbidden)
    monkeypatch.setattr(mx.nd.NDArray, 'asscalar', forbidden)
    for _ in range(3):
        for i, (w, g) in enumerate(zip(weights, grads)):
            updater(i, g, w)
    monkeypatch.undo()
    mx.nd.waitall()


@pytest.mark.skipif(mx.context.num_gpus() == 0, reason='needs a GPU')
def test_gpu_matches_cpu():
    case = CASES_BY_ID['everything']
    weights, grads = make_problem(20, seed=8)
    cpu, _ = run_mxnet(case, weights, grads, dtype='float32')
    with mx.Context(mx.gpu(0)):
        gpu, _ = run_mxnet(case, weights, grads, dtype='float32')
    for a, b in zip(gpu, cpu):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# MXNet's operators refuse subnormal float64 scalars ('Out of range value for scalar'), and
# lr * mu can become one when mu is near 2.2e-308: values in [0, 1e-12) are drawn as 0.
unit = st.one_of(st.just(0.0), st.floats(1e-12, 0.999))
hyper_parameters = st.fixed_dictionaries(dict(
    learning_rate=st.floats(1e-5, 1.0), beta1=unit, beta2=unit, mu=unit,
    epsilon=st.floats(1e-10, 1e-1), preconditioner=st.sampled_from(namsg.PRECONDITIONERS)))


@settings(max_examples=40, deadline=None)
@given(hp=hyper_parameters, seed=st.integers(0, 2 ** 16), scale=st.floats(1e-6, 1e3))
def test_updates_are_finite_and_vhat_never_decreases(hp, seed, scale):
    rng = np.random.default_rng(seed)
    opt = namsg.ARSG(**hp)
    weight = mx.nd.array(rng.normal(size=(8,)), dtype='float32')
    state = opt.create_state(0, weight)
    previous_vhat = None
    for _ in range(5):
        opt.update(0, weight, mx.nd.array(rng.normal(size=(8,)) * scale), state)
        assert np.isfinite(weight.asnumpy()).all()
        if hp['preconditioner'] == 'amsgrad':
            vhat = state[2].asnumpy()
            assert previous_vhat is None or (vhat >= previous_vhat).all()
            previous_vhat = vhat


@settings(max_examples=40, deadline=None)
@given(hp=hyper_parameters)
def test_zero_gradient_with_zero_momentum_leaves_weights_unchanged(hp):
    opt = namsg.ARSG(**hp)
    w0 = np.linspace(-1, 1, 6)
    weight = mx.nd.array(w0, dtype='float64')
    state = opt.create_state(0, weight)
    for _ in range(3):
        opt.update(0, weight, mx.nd.zeros((6,), dtype='float64'), state)
    np.testing.assert_array_equal(weight.asnumpy(), w0)


# Run in a child process: before the fix, integer weights killed the process with SIGFPE.
INTEGER_WEIGHTS_SCRIPT = r'''
import sys
sys.path.insert(0, sys.argv[1])
import mxnet as mx
import namsg
from cases import PATHS
from harness import make_updater
for case, fused in PATHS:
    for dtype in ('int32', 'int64', 'uint8'):
        updater = make_updater(case, fused=fused)
        weight = mx.nd.array([[1, 2], [3, 4]], dtype=dtype)
        try:
            updater(0, mx.nd.array([[1, -1], [2, 0]], dtype=dtype), weight)
            mx.nd.waitall()
            print('no error', case.id, fused, dtype, weight.asnumpy().tolist())
        except ValueError as e:
            verdict = 'ok' if 'floating point' in str(e) and not updater.states else 'bad'
            print(verdict, case.id, fused, dtype, str(e))
'''


def test_integer_weights_raise_before_any_state_on_every_path():
    """MXNet's optimizers require floating point; before the fix 'arsg' and 'amsgrad' died with
    SIGFPE (division by a vhat truncated to 0) and 'rsg', 'radam', 'ranger' did nothing."""
    result = subprocess.run([sys.executable, '-c', INTEGER_WEIGHTS_SCRIPT,
                             str(Path(__file__).parent)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, 'child died (%d): %s\n%s' % (
        result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stdout.splitlines()
    assert len(lines) == 3 * len(PATHS), result.stdout
    assert all(line.startswith('ok ') for line in lines), result.stdout


@pytest.mark.parametrize('case,fused', PATHS, ids=PATH_IDS)
def test_row_sparse_weight_takes_the_lazy_update_of_a_dense_weight(case, fused):
    """A row_sparse weight (SparseEmbedding's) with row_sparse gradients ends where a dense
    weight with the same gradients does: only the rows present move, with their state (the
    dense-weight lazy update is checked against the reference row by row above). Before the
    fix the write-back into the row_sparse weight raised a bare AssertionError."""
    rng = np.random.default_rng(11)
    w0 = rng.uniform(-0.5, 0.5, size=(6, 3))
    dense_w = mx.nd.array(w0, dtype='float64')
    sparse_w = mx.nd.array(w0, dtype='float64').tostype('row_sparse')
    updaters = [(make_updater(case, fused=fused), w) for w in (dense_w, sparse_w)]
    for k in range(1, 21):
        rows = sorted(rng.choice(6, size=1 + k % 4, replace=False))
        grad = rng.normal(size=w0.shape)
        for updater, w in updaters:
            if case.mu_at is not None:
                updater.optimizer.mu = case.mu_at(k)
            updater(0, _row_sparse(grad, rows), w)
    assert sparse_w.stype == 'row_sparse'
    assert not np.array_equal(sparse_w.asnumpy(), w0)
    np.testing.assert_array_equal(sparse_w.asnumpy(), dense_w.asnumpy(), err_msg=case.id)


def test_row_sparse_weight_missing_rows_is_refused_clearly():
    weight = mx.nd.sparse.row_sparse_array((mx.nd.ones((2, 3)), mx.nd.array([0, 4])),
                                           shape=(6, 3))
    opt = namsg.ARSG()
    state = opt.create_state(0, weight)
    with pytest.raises(ValueError, match='stores 2 of its rows'):
        opt.update(0, weight, _row_sparse(np.ones((6, 3)), [1, 4]), state)


# -- the step size an lr_scheduler gives (issue 25, item 5) -----------------------------------

# Every optimizer of the package, both ARSG paths.
SCHEDULED = [('arsg', {'fused': False}), ('arsg', {'fused': True}), ('rsg', {'fused': False}),
             ('rsg', {'fused': True}), ('amsgrad', {}), ('radam', {}), ('ranger', {}),
             ('lookahead', {'optimizer': 'arsg', 'fused': False}),
             ('lookahead', {'optimizer': 'arsg', 'fused': True}),
             ('lookahead', {'optimizer': 'radam'})]
# 'fused' / 'ndarray' in the ids: .ci/compat.sh deselects the fused ones where it cannot load.
SCHEDULED_IDS = ['%s-%s' % (name, '-'.join(
    ({True: 'fused', False: 'ndarray'}[v] if k == 'fused' else str(v)) for k, v in kwargs.items())
    or 'default') for name, kwargs in SCHEDULED]


def _schedule(base_lr=0.1):
    return mx.lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=base_lr)


def _weights_after(opt, steps=5):
    updater = mx.optimizer.get_updater(opt)
    rng = np.random.default_rng(3)
    weights = [mx.nd.array(rng.normal(size=s)) for s in [(4, 3), (5,)]]
    for _ in range(steps):
        updater([0, 1], [mx.nd.array(rng.normal(size=w.shape)) for w in weights], weights)
    return [w.asnumpy() for w in weights]


@pytest.mark.parametrize('name,kwargs', SCHEDULED, ids=SCHEDULED_IDS)
def test_a_scheduler_given_without_learning_rate_sets_the_step_size(name, kwargs, capsys):
    """create('arsg', lr_scheduler=FactorScheduler(..., base_lr=0.1)) ran at the class default
    0.001: MXNet's Optimizer overwrote base_lr with learning_rate (printing a note)."""
    opt = mx.optimizer.create(name, lr_scheduler=_schedule(), **kwargs)
    assert opt.learning_rate == 0.1 and opt.lr_scheduler.base_lr == 0.1
    # What a parameter server is sent.
    assert pickle.loads(pickle.dumps(opt)).learning_rate == 0.1
    explicit = mx.optimizer.create(name, learning_rate=0.1, lr_scheduler=_schedule(), **kwargs)
    for a, b in zip(_weights_after(opt), _weights_after(explicit)):
        np.testing.assert_array_equal(a, b)
    assert 'overwritten' not in capsys.readouterr().out


@pytest.mark.parametrize('name,kwargs', SCHEDULED, ids=SCHEDULED_IDS)
def test_a_learning_rate_given_with_another_scheduler_wins_with_a_warning(name, kwargs, capsys):
    """MXNet's rule (learning_rate overwrites the scheduler's base_lr), said as a warning
    naming both; MXNet only printed a note to stdout."""
    schedule = _schedule()
    with pytest.warns(UserWarning, match=r'got learning_rate=0\.05 and an lr_scheduler with '
                                         r'base_lr=0\.1: learning_rate wins'):
        opt = mx.optimizer.create(name, learning_rate=0.05, lr_scheduler=schedule, **kwargs)
    assert opt.learning_rate == 0.05 and schedule.base_lr == 0.05
    assert capsys.readouterr().out == ''


@pytest.mark.parametrize('name,kwargs', SCHEDULED, ids=SCHEDULED_IDS)
def test_trainer_and_module_take_the_schedulers_step_size(name, kwargs):
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize()
    trainer = mx.gluon.Trainer(net.collect_params(), name,
                               dict(kwargs, lr_scheduler=_schedule()))
    assert trainer.learning_rate == 0.1

    out = mx.sym.FullyConnected(mx.sym.Variable('data'), num_hidden=2, name='fc')
    mod = mx.mod.Module(mx.sym.MakeLoss(mx.sym.sum(out)), label_names=None)
    mod.bind(data_shapes=[('data', (4, 3))])
    mod.init_params()
    mod.init_optimizer(optimizer=name, optimizer_params=dict(kwargs, lr_scheduler=_schedule()))
    assert mod._optimizer.learning_rate == 0.1


def test_the_default_learning_rate_reads_as_a_number_in_help():
    for cls, default in ((namsg.ARSG, '0.001'), (namsg.RSG, '0.01'), (namsg.AMSGrad, '0.001'),
                         (namsg.RAdam, '0.001'), (namsg.Ranger, '0.001')):
        assert 'learning_rate=%s,' % default in str(inspect.signature(cls)), cls
        assert type(cls().lr) is float


# -- $NAMSG_AGGREGATION_SIZE (issue 25, item 7) ------------------------------------------------

AGGREGATING = [('arsg', {}), ('rsg', {}), ('amsgrad', {}), ('radam', {}), ('ranger', {}),
               ('lookahead', {'optimizer': 'sgd'})]


@pytest.mark.parametrize('value', ['abc', '-1', '1.5', '4 parameters'])
@pytest.mark.parametrize('name,kwargs', AGGREGATING, ids=[n for n, _ in AGGREGATING])
def test_a_bad_aggregation_size_is_named_when_the_optimizer_is_made(monkeypatch, name, kwargs,
                                                                    value):
    """It failed every ARSG with a bare "invalid literal for int()" (and took -1)."""
    monkeypatch.setenv('NAMSG_AGGREGATION_SIZE', value)
    message = (r"^\$NAMSG_AGGREGATION_SIZE=%s is not a number of parameters: set it to an "
               r"integer >= 0 .*default 128\), or unset it$" % re.escape(repr(value)))
    with pytest.raises(ValueError, match=message):
        mx.optimizer.create(name, **kwargs)
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize()
    with pytest.raises(ValueError, match=message):
        mx.gluon.Trainer(net.collect_params(), name, kwargs)


@pytest.mark.parametrize('name,kwargs', AGGREGATING, ids=[n for n, _ in AGGREGATING])
def test_aggregation_size_values(monkeypatch, name, kwargs):
    for value, expected in (('', 128), (' 4 ', 4), ('0', 0), ('1', 1)):
        monkeypatch.setenv('NAMSG_AGGREGATION_SIZE', value)
        assert mx.optimizer.create(name, **kwargs).aggregate_num == expected
    monkeypatch.delenv('NAMSG_AGGREGATION_SIZE')
    assert mx.optimizer.create(name, **kwargs).aggregate_num == 128


# -- repr (issue 24, item 6) ---------------------------------------------------------------

REPRS = [
    (lambda: namsg.ARSG(learning_rate=0.01),
     "ARSG(learning_rate=0.01, beta1=0.999, beta2=0.99, epsilon=1e-08, mu=0.1, "
     "preconditioner='amsgrad', wd=0.0)"),
    (lambda: namsg.ARSG(epsilon=1e-3, preconditioner='adam', lower_bound=-1.0, fused=False,
                        wd=1e-4, clip_gradient=5.0, multi_precision=True, lazy_update=False),
     "ARSG(learning_rate=0.001, beta1=0.999, beta2=0.99, epsilon=0.001, mu=0.1, "
     "preconditioner='adam', lower_bound=-1.0, fused=False, lazy_update=False, wd=0.0001, "
     "clip_gradient=5.0, multi_precision=True)"),
    # learning_rate is the step size now (MXNet's property): the scheduler's at update 6.
    (lambda: namsg.ARSG(lr_scheduler=_schedule(), begin_num_update=6),
     "ARSG(learning_rate=0.025, beta1=0.999, beta2=0.99, epsilon=1e-08, mu=0.1, "
     "preconditioner='amsgrad', wd=0.0, lr_scheduler=FactorScheduler(base_lr=0.025), "
     "begin_num_update=6)"),
    (lambda: namsg.RSG(beta=0.9, upper_bound=2.0),
     "RSG(learning_rate=0.01, beta=0.9, mu=0.1, upper_bound=2.0, wd=0.0)"),
    (lambda: namsg.AMSGrad(), "AMSGrad(learning_rate=0.001, beta1=0.9, beta2=0.999, "
                              "epsilon=1e-08, wd=0.0)"),
    (lambda: namsg.RAdam(rescale_grad=0.5), "RAdam(learning_rate=0.001, beta1=0.9, beta2=0.999, "
                                            "epsilon=1e-08, rectify_threshold=5.0, wd=0.0, "
                                            "rescale_grad=0.5)"),
    (lambda: namsg.Ranger(), "Ranger(learning_rate=0.001, beta1=0.95, beta2=0.999, "
                             "epsilon=1e-05, rectify_threshold=5.0, wd=0.0, k=6, alpha=0.5)"),
    (lambda: namsg.Lookahead('arsg', k=3, mu=0.2),
     "Lookahead(optimizer=ARSG(learning_rate=0.001, beta1=0.999, beta2=0.99, epsilon=1e-08, "
     "mu=0.2, preconditioner='amsgrad', wd=0.0), k=3, alpha=0.5)"),
    (lambda: namsg.Lookahead('sgd', momentum=0.9),
     "Lookahead(optimizer=SGD(learning_rate=0.01, momentum=0.9, wd=0.0), k=5, alpha=0.5)"),
    # skip_nonfinite_grad (default False) only when set, the wrapper's or the inner one's.
    (lambda: namsg.AMSGrad(skip_nonfinite_grad=True),
     "AMSGrad(learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-08, "
     "skip_nonfinite_grad=True, wd=0.0)"),
    (lambda: namsg.Ranger(skip_nonfinite_grad=True),
     "Ranger(learning_rate=0.001, beta1=0.95, beta2=0.999, epsilon=1e-05, rectify_threshold=5.0, "
     "wd=0.0, k=6, alpha=0.5, skip_nonfinite_grad=True)"),
    (lambda: namsg.Lookahead('rsg', skip_nonfinite_grad=True),
     "Lookahead(optimizer=RSG(learning_rate=0.01, beta=0.999, mu=0.1, wd=0.0), k=5, alpha=0.5, "
     "skip_nonfinite_grad=True)"),
    (lambda: namsg.Lookahead(namsg.RSG(skip_nonfinite_grad=True)),
     "Lookahead(optimizer=RSG(learning_rate=0.01, beta=0.999, mu=0.1, "
     "skip_nonfinite_grad=True, wd=0.0), k=5, alpha=0.5)"),
]


@pytest.mark.parametrize('make,expected', REPRS, ids=[e.split('(')[0] + str(i)
                                                      for i, (_, e) in enumerate(REPRS)])
def test_repr_shows_the_hyper_parameters(make, expected):
    """They printed as <namsg.arsg.ARSG object at 0x...>."""
    assert repr(make()) == expected


def test_repr_follows_changes_made_later():
    opt = namsg.ARSG()
    opt.mu, opt.rescale_grad = 0.3, 1.0 / 64        # the boost, Trainer.step
    opt.set_learning_rate(0.02)
    assert repr(opt) == ("ARSG(learning_rate=0.02, beta1=0.999, beta2=0.99, epsilon=1e-08, "
                         "mu=0.3, preconditioner='amsgrad', wd=0.0, rescale_grad=0.015625)")


def test_a_bad_namsg_fused_is_refused_when_the_optimizer_is_made(monkeypatch):
    """It was read at the first update only: with several devices that update runs in a kvstore
    callback, whose exception MXNet only prints at every step while the weights stay put."""
    monkeypatch.setenv('NAMSG_FUSED', 'yes')
    with pytest.raises(ValueError, match=r"NAMSG_FUSED='yes': set it to auto, 0 or 1"):
        mx.optimizer.create('arsg')
    with pytest.raises(ValueError, match='NAMSG_FUSED'):
        mx.optimizer.create('rsg')
    mx.optimizer.create('arsg', fused=False)        # the variable does not decide then


@pytest.mark.parametrize('stype', ['row_sparse'])
def test_the_fused_operator_is_not_looked_for_where_it_would_not_be_used(monkeypatch, stype):
    """A row_sparse gradient takes the NDArray path whatever `fused` says, so `fused=True` must
    not fail, nor build or warn, for an operator that would never run."""
    from namsg import kernels

    def unavailable(requested=None):
        raise kernels.FusedUnavailable('looked for')
    monkeypatch.setattr(kernels, 'use_fused', unavailable)
    opt = mx.optimizer.create('arsg', fused=True, learning_rate=0.1)
    weight = mx.nd.ones((4, 2))
    grad = mx.nd.sparse.row_sparse_array((mx.nd.ones((1, 2)), mx.nd.array([1], dtype='int64')),
                                         shape=(4, 2))
    mx.optimizer.get_updater(opt)(0, grad, weight)
    assert weight.asnumpy()[1].max() < 1 and (weight.asnumpy()[[0, 2, 3]] == 1).all()


def test_the_layout_error_names_the_class_the_user_made():
    opt = mx.optimizer.create('rsg')
    weight = mx.nd.ones((2,))
    state = opt.create_state(0, weight)
    with pytest.raises(ValueError, match=r"^RSG\(preconditioner='none'\) was given a state of 2"):
        opt.update_multi_precision(0, weight, mx.nd.ones((2,)),
                                   (mx.nd.zeros((2,)), mx.nd.zeros((2,))) + state[1:])
