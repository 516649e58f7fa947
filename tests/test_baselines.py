"""The baselines (AMSGRAD, RAdam, Lookahead, RANGER), MXNet's nadam, and the Table A1 mapping.
Their parity with the NumPy reference runs in test_parity over the cases of cases.py."""

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import namsg
from namsg import reference as ref
from namsg.experiments import hparams
from harness import make_problem


@pytest.mark.parametrize('name,cls', [('amsgrad', namsg.AMSGrad), ('radam', namsg.RAdam),
                                      ('ranger', namsg.Ranger), ('lookahead', namsg.Lookahead)])
def test_names_are_registered(name, cls):
    assert type(mx.optimizer.create(name)) is cls


BAD_ARGUMENTS = [
    ('amsgrad', dict(beta1=1.0), 'beta1'),
    ('amsgrad', dict(epsilon=0), 'epsilon'),
    ('radam', dict(beta2=-0.5), 'beta2'),
    ('radam', dict(rectify_threshold=3), 'rectify_threshold'),
    ('ranger', dict(k=0), 'k'),
    ('ranger', dict(alpha=0.0), 'alpha'),
    ('ranger', dict(alpha=1.5), 'alpha'),
    ('ranger', dict(learning_rate=-1.0), 'learning_rate'),
    ('lookahead', dict(optimizer=42), 'optimizer'),
    ('lookahead', dict(optimizer=mx.optimizer.SGD(), learning_rate=0.1), 'instance'),
]


@pytest.mark.parametrize('name,kwargs,what', BAD_ARGUMENTS,
                         ids=['%s-%s' % (n, w) for n, _, w in BAD_ARGUMENTS])
def test_invalid_arguments_raise_value_error(name, kwargs, what):
    with pytest.raises(ValueError, match=what):
        mx.optimizer.create(name, **kwargs)


def test_lookahead_forwards_what_mxnet_sets_to_the_inner_optimizer():
    inner = namsg.ARSG(learning_rate=0.1)
    opt = namsg.Lookahead(inner, k=3, alpha=0.5)
    opt.rescale_grad = 0.25            # as Trainer.step does
    opt.set_learning_rate(0.05)
    opt.mu = 0.2
    assert (inner.rescale_grad, inner.lr, inner.mu) == (0.25, 0.05, 0.2)
    assert opt.learning_rate == 0.05 and opt.k == 3 and opt.aggregate_num == 128


def test_lookahead_around_mxnet_sgd_matches_manual_slow_steps():
    """Lookahead wraps any MXNet optimizer, one that aggregates updates (sgd) included."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3))
    grads = [rng.normal(size=w0.shape) for _ in range(12)]
    wrapped = mx.nd.array(w0, dtype='float64')
    updater = mx.optimizer.get_updater(namsg.Lookahead('sgd', k=4, alpha=0.25,
                                                       learning_rate=0.1, momentum=0.9))
    plain = mx.nd.array(w0, dtype='float64')
    plain_updater = mx.optimizer.get_updater(mx.optimizer.SGD(learning_rate=0.1, momentum=0.9))
    slow = w0.copy()
    for k, g in enumerate(grads, start=1):
        updater(0, mx.nd.array(g, dtype='float64'), wrapped)
        plain_updater(0, mx.nd.array(g, dtype='float64'), plain)
        if k % 4 == 0:
            fast, slow = ref.lookahead_sync(plain.asnumpy(), slow, 0.25)
            plain[:] = fast
    np.testing.assert_allclose(wrapped.asnumpy(), plain.asnumpy(), rtol=1e-12)


@pytest.mark.parametrize('inner', [dict(optimizer='sgd', momentum=0.9),
                                   dict(optimizer='arsg', fused=False),
                                   dict(optimizer='arsg', fused=True)],
                         ids=['sgd', 'arsg-ndarray', 'arsg-fused'])
def test_lookahead_multi_precision_steps_the_master_copy(inner):
    """multi_precision, float16 weights, several parameters per call: the float32 master copy
    takes the inner and the slow steps exactly as float32 weights do, and the weight is the
    master rounded to float16 (the inner optimizer's own or MXNet's)."""
    rng = np.random.default_rng(1)
    shapes = [(4, 3), (5,), (2, 2)]
    w0 = [rng.normal(size=s).astype(np.float16) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float16) for s in shapes] for _ in range(7)]

    def run(dtype, **kwargs):
        updater = mx.optimizer.get_updater(namsg.Lookahead(k=3, alpha=0.5, learning_rate=0.1,
                                                           **dict(inner, **kwargs)))
        weights = [mx.nd.array(w, dtype=dtype) for w in w0]
        for gs in grads:
            updater(list(range(len(shapes))), [mx.nd.array(g, dtype=dtype) for g in gs],
                    weights)
        return updater, [w.asnumpy() for w in weights]

    updater, half = run('float16', multi_precision=True)
    _, single = run('float32')
    for i, (h, s) in enumerate(zip(half, single)):
        np.testing.assert_array_equal(updater.states[i][0].asnumpy(), s)
        np.testing.assert_array_equal(h, s.astype(np.float16))


def test_ranger_in_trainer_saves_and_restores_slow_weights(tmp_path):
    def make():
        # The same names each time, as a model built in a new process has them.
        net = gluon.nn.Dense(2, in_units=3, prefix='dense_')
        net.initialize(mx.init.Constant(0.1))
        return net, gluon.Trainer(net.collect_params(), 'ranger',
                                  dict(learning_rate=0.01, k=3, alpha=0.5))

    x = mx.nd.array(np.random.default_rng(1).normal(size=(8, 3)))

    def steps(net, trainer, n):
        for _ in range(n):
            with mx.autograd.record():
                loss = (net(x) ** 2).sum()
            loss.backward()
            trainer.step(8)

    net, trainer = make()
    steps(net, trainer, 8)
    expected = net.weight.data().asnumpy()
    net, trainer = make()
    steps(net, trainer, 4)
    net.save_parameters(str(tmp_path / 'p'))
    trainer.save_states(str(tmp_path / 's'))
    net, trainer = make()
    net.load_parameters(str(tmp_path / 'p'))
    trainer.load_states(str(tmp_path / 's'))
    steps(net, trainer, 4)
    np.testing.assert_array_equal(net.weight.data().asnumpy(), expected)


def _nadam_reference(weights, grads, alpha, beta1, beta2, eps, shared_schedule=False):
    """Dozat's NAdam per parameter; with ``shared_schedule`` one momentum-schedule product is
    carried from parameter to parameter, as MXNet's nadam does."""
    xs = [np.array(w) for w in weights]
    states = [ref.adaptive_init(x) for x in xs]
    schedules = [1.0] * len(xs)
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            if shared_schedule and i > 0:
                schedules[i] = schedules[i - 1]
            xs[i], states[i], schedules[i] = ref.nadam_step(
                xs[i], states[i], g, alpha, beta1, beta2, eps, m_schedule=schedules[i])
        if shared_schedule:
            schedules[0] = schedules[-1]
    return xs


def _mxnet_nadam(weights, grads, **kwargs):
    updater = mx.optimizer.get_updater(mx.optimizer.create('nadam', **kwargs))
    ws = [mx.nd.array(w, dtype='float64') for w in weights]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            updater(i, mx.nd.array(g, dtype='float64'), ws[i])
    return [w.asnumpy() for w in ws]


NADAM = dict(learning_rate=0.01, beta1=0.9, beta2=0.999, epsilon=1e-8)


def test_mxnet_nadam_is_dozats_nadam_for_one_parameter():
    weights, grads = make_problem(30, seed=10, shapes=[(6,)])
    np.testing.assert_allclose(_mxnet_nadam(weights, grads, **NADAM)[0],
                               _nadam_reference(weights, grads, 0.01, 0.9, 0.999, 1e-8)[0],
                               rtol=1e-9)


def test_mxnet_nadam_shares_its_momentum_schedule_across_parameters():
    """MXNet 1.9.1's nadam keeps one m_schedule for the whole optimizer and multiplies it at
    every parameter's update, so with P parameters the schedule product advances P times per
    step. Only the bias correction of the first steps differs from Dozat's NAdam (the product
    is below 1e-3 after ~10 steps either way). Recorded here and in the README."""
    weights, grads = make_problem(30, seed=10, shapes=[(6,), (6,)])
    mxnet_result = _mxnet_nadam(weights, grads, **NADAM)
    shared = _nadam_reference(weights, grads, 0.01, 0.9, 0.999, 1e-8, shared_schedule=True)
    per_parameter = _nadam_reference(weights, grads, 0.01, 0.9, 0.999, 1e-8)
    for got, want, dozat in zip(mxnet_result, shared, per_parameter):
        np.testing.assert_allclose(got, want, rtol=1e-9)
        assert not np.allclose(got, dozat, rtol=1e-6)


@pytest.mark.parametrize('method', hparams.METHODS)
@pytest.mark.parametrize('setting', hparams.SETTINGS)
def test_every_table_a1_entry_builds_an_mxnet_optimizer(method, setting):
    spec = hparams.paper_optimizer(method, setting)
    opt = mx.optimizer.create(spec.name, **spec.kwargs)
    assert spec.boost == (method == 'ARSGB')
    adaptive = method not in ('SGD', 'RSG')
    if adaptive:
        fine = setting == 'cifar10_fine' and method in ('ARSG', 'ARSGB')
        assert spec.kwargs['epsilon'] == (1e-3 if fine else 1e-8)
    assert opt.lr == pytest.approx(spec.kwargs['learning_rate'])


def _markdown_rows(table):
    """{first cell: [other cells]} of a Markdown table's body."""
    lines = table.strip().splitlines()[2:]
    return {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip('|').split('|')] for line in lines)}


def test_the_docs_table_a1_is_table_a1():
    rows = _markdown_rows(hparams.table_a1_markdown())
    assert list(rows) == list(hparams.METHODS)
    for method, cells in rows.items():
        assert cells[0] == '(%s)' % ', '.join(hparams.TUPLE_FIELDS[method])
        for setting, cell in zip(hparams.SETTINGS, cells[1:]):
            assert tuple(float(v) for v in cell.strip('()').split(', ')) == \
                hparams.TABLE_A1[method][setting]


@pytest.mark.parametrize('setting', hparams.SETTINGS)
def test_the_docs_mxnet_arguments_are_what_the_scripts_create(setting):
    rows = _markdown_rows(hparams.mxnet_arguments_markdown(setting))
    assert list(rows) == list(hparams.METHODS)
    for method, (name, arguments) in rows.items():
        spec = hparams.paper_optimizer(method, setting)
        assert name == "`'%s'`" % spec.name
        assert arguments.endswith(' and the observation boost') == spec.boost
        written = dict(item.split('=') for item in
                       arguments.split('`')[1].split(', '))
        assert list(written) == list(spec.kwargs)
        for key, value in spec.kwargs.items():
            assert float(written[key]) == pytest.approx(value, rel=1e-12, abs=1e-15)


def test_sgd_tuple_maps_to_mxnet_heavy_ball_convention():
    spec = hparams.to_mxnet('SGD', (1.0, 0.9))
    assert spec.name == 'sgd'
    assert spec.kwargs == dict(learning_rate=pytest.approx(0.1), momentum=0.9)


def test_ranger_tuple_maps_to_ranger():
    spec = hparams.to_mxnet('RANGER', (0.02, 0.99, 0.999, 5, 0.5))
    opt = mx.optimizer.create(spec.name, **spec.kwargs)
    assert (opt.k, opt.alpha, opt.lr, opt.beta1, opt.beta2) == (5, 0.5, 0.02, 0.99, 0.999)


def test_unknown_method_or_setting_is_refused():
    with pytest.raises(ValueError, match='method'):
        hparams.to_mxnet('LAMB', (0.1,))
    with pytest.raises(ValueError, match='setting'):
        hparams.paper_optimizer('ARSG', 'imagenet')
