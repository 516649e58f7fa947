"""ARSG through gluon.Trainer (contexts, kvstores, update on kvstore or not, checkpoints) and
through the Module API, against the NumPy reference on a linear least-squares model."""

import copy
import functools
import itertools
import pickle

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import namsg
from namsg import reference as ref
from namsg._base import UpdateCount
from cases import CASES, CASES_BY_ID, PATHS, path_id

IN, OUT, BATCH, STEPS = 5, 3, 8, 12
HP = dict(learning_rate=0.01, beta1=0.9, beta2=0.99, epsilon=1e-8, mu=0.1, wd=1e-3)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(STEPS * BATCH, IN))
    y = x @ rng.normal(size=(IN, OUT)) + 0.1 * rng.normal(size=(STEPS * BATCH, OUT))
    w0 = rng.normal(size=(OUT, IN)) * 0.1
    b0 = rng.normal(size=(OUT,)) * 0.1
    return x, y, w0, b0


def _reference(x, y, w0, b0, preconditioner='amsgrad', bias_wd=1.0, steps=STEPS, skip=None):
    """Least squares, loss 0.5 * mean over outputs of the squared error, summed over the batch
    and rescaled by 1/batch as Trainer.step(batch) and Module do; Algorithm 1 per parameter.
    ``skip``: {'w' or 'b': step (from 1) at which that parameter is left alone}."""
    params = {'w': np.array(w0), 'b': np.array(b0)}
    states = {k: ref.arsg_init(v, HP['epsilon']) for k, v in params.items()}
    wd = {'w': HP['wd'], 'b': HP['wd'] * bias_wd}
    for k in range(steps):
        xb, yb = x[k * BATCH:(k + 1) * BATCH], y[k * BATCH:(k + 1) * BATCH]
        dpred = (xb @ params['w'].T + params['b'] - yb) / OUT
        grads = {'w': dpred.T @ xb, 'b': dpred.sum(axis=0)}
        for name in params:
            if skip and skip.get(name) == k + 1:
                continue
            g = ref.mxnet_gradient(grads[name], params[name], 1.0 / BATCH, wd[name])
            params[name], states[name] = ref.arsg_step(
                params[name], states[name], g, HP['learning_rate'], HP['beta1'], HP['beta2'],
                HP['mu'], HP['epsilon'], preconditioner)
    return params['w'], params['b']


def _make_net(w0, b0, ctxs, prefix='dense_'):
    # A fixed prefix: Gluon numbers auto-generated names per process (dense0_, dense1_, ...),
    # so a net built again would get other names than the one whose states it resumes.
    net = gluon.nn.Dense(OUT, in_units=IN, prefix=prefix)
    net.initialize(ctx=ctxs)
    net.weight.set_data(mx.nd.array(w0))
    net.bias.set_data(mx.nd.array(b0))
    return net


def _train(net, trainer, x, y, ctxs, steps, step=None):
    """``steps`` steps of ``trainer`` (``step(batch_size)`` in place of ``trainer.step``)."""
    step = step or trainer.step
    loss_fn = gluon.loss.L2Loss()
    for k in range(steps):
        xs = gluon.utils.split_and_load(mx.nd.array(x[k * BATCH:(k + 1) * BATCH]), ctxs)
        ys = gluon.utils.split_and_load(mx.nd.array(y[k * BATCH:(k + 1) * BATCH]), ctxs)
        with autograd.record():
            losses = [loss_fn(net(xi), yi) for xi, yi in zip(xs, ys)]
        autograd.backward(losses)
        step(BATCH)


def _weights(net, ctx):
    return net.weight.data(ctx).asnumpy(), net.bias.data(ctx).asnumpy()


CONTEXTS = {'cpu0': [mx.cpu(0)], 'cpu0+cpu1': [mx.cpu(0), mx.cpu(1)]}


def _meaningful(contexts, kvstore, update_on_kvstore):
    if kvstore is None:
        # Without a kvstore nothing sums the devices' gradients (each device would train on
        # its own shard), and nothing can update on it.
        return contexts == 'cpu0' and not update_on_kvstore
    # With one device Trainer drops the kvstore; MXNet 1.9.1 then fails on
    # update_on_kvstore=True ('NoneType' object has no attribute 'is_capable').
    return not (contexts == 'cpu0' and update_on_kvstore)


SETUPS = [setup for setup in itertools.product(CONTEXTS, [None, 'local', 'device'],
                                               [False, True]) if _meaningful(*setup)]


@pytest.mark.parametrize('preconditioner', ['amsgrad', 'adam'])
@pytest.mark.parametrize('contexts,kvstore,update_on_kvstore', SETUPS)
def test_trainer_matches_reference(contexts, kvstore, update_on_kvstore, preconditioner):
    """Every context ends with the reference's weights. 'adam' depends on the step count t, so
    it also checks that counts stay right per parameter with several contexts."""
    ctxs = CONTEXTS[contexts]
    x, y, w0, b0 = _data()
    net = _make_net(w0, b0, ctxs)
    trainer = gluon.Trainer(net.collect_params(), 'arsg',
                            dict(HP, preconditioner=preconditioner),
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    _train(net, trainer, x, y, ctxs, STEPS)
    expected = _reference(x, y, w0, b0, preconditioner)
    for ctx in ctxs:
        for actual, e in zip(_weights(net, ctx), expected):
            np.testing.assert_allclose(actual, e, rtol=1e-5, atol=1e-6)


def _gradients_written(optimizer, kwargs, steps=3):
    """Train a few steps; the steps (from 1) after which a gradient differed from backward's."""
    x, y, w0, b0 = _data()
    written = []

    def step(batch_size):
        before = [p.grad().asnumpy() for p in net.collect_params().values()]
        trainer.step(batch_size)
        # MXNet 1.5's adam, rmsprop and ftrl write into the gradient unknown to the engine,
        # which would not order that write before this read: wait for the update.
        mx.nd.waitall()
        after = [p.grad().asnumpy() for p in net.collect_params().values()]
        if any(not np.array_equal(b, a) for b, a in zip(before, after)):
            written.append(len(written) + 1)
    net = _make_net(w0, b0, [mx.cpu()])
    trainer = gluon.Trainer(net.collect_params(), optimizer, kwargs)
    _train(net, trainer, x, y, [mx.cpu()], steps, step)
    return written


# Each optimizer of namsg once (the table's first configuration of it), on each path it has.
FIRST_OF_EACH = [(case, fused) for case, fused in PATHS
                 if case is next(c for c in CASES if c.optimizer == case.optimizer)]


@pytest.mark.parametrize('case,fused', FIRST_OF_EACH,
                         ids=[path_id(case.id, fused) for case, fused in FIRST_OF_EACH])
def test_trainer_step_leaves_the_gradients_as_backward_made_them(case, fused):
    """A gradient read after trainer.step (its norm logged, or kept with grad_req='add') is the
    one backward made. (The parity harness checks it for every configuration through the
    Updater; MXNet's own adadelta breaks it, see the next test.)"""
    kwargs = case.make_kwargs()
    if fused is not None:
        kwargs['fused'] = fused
    assert _gradients_written(case.optimizer, kwargs) == []


@pytest.mark.parametrize('optimizer', ['adadelta'] + (
    ['adam', 'rmsprop', 'ftrl'] if namsg._mxnet.VERSION < (1, 6) else []))
def test_mxnet_s_own_optimizers_that_write_into_the_gradients(optimizer):
    """What docs/troubleshooting.md says of MXNet (its "Other MXNet behaviours"): adadelta
    scales the gradient in place at every step, on every release; on MXNet 1.5 the adam,
    rmsprop and ftrl operators write into their gradient input too, unknown to the engine (so a
    read not preceded by a wait may see the write or not)."""
    assert _gradients_written(optimizer, dict(learning_rate=0.01, wd=1e-3)) == [1, 2, 3]


def test_trainer_accepts_an_instance():
    x, y, w0, b0 = _data()
    net = _make_net(w0, b0, [mx.cpu()])
    opt = namsg.ARSG(**HP)
    trainer = gluon.Trainer(net.collect_params(), opt)
    _train(net, trainer, x, y, [mx.cpu()], STEPS)
    for actual, e in zip(_weights(net, mx.cpu()), _reference(x, y, w0, b0)):
        np.testing.assert_allclose(actual, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('contexts,kvstore,update_on_kvstore',
                         [('cpu0', None, False), ('cpu0+cpu1', 'device', False),
                          ('cpu0+cpu1', 'device', True)])
def test_save_and_load_states_resume_the_same_trajectory(tmp_path, contexts, kvstore,
                                                         update_on_kvstore):
    ctxs = CONTEXTS[contexts]
    x, y, w0, b0 = _data(seed=1)
    kwargs = dict(kvstore=kvstore, update_on_kvstore=update_on_kvstore)

    net = _make_net(w0, b0, ctxs)
    trainer = gluon.Trainer(net.collect_params(), 'arsg', HP, **kwargs)
    _train(net, trainer, x, y, ctxs, STEPS)
    uninterrupted = _weights(net, ctxs[0])

    half = STEPS // 2
    net = _make_net(w0, b0, ctxs)
    trainer = gluon.Trainer(net.collect_params(), 'arsg', HP, **kwargs)
    _train(net, trainer, x[:half * BATCH], y[:half * BATCH], ctxs, half)
    net.save_parameters(str(tmp_path / 'net.params'))
    trainer.save_states(str(tmp_path / 'trainer.states'))

    net = _make_net(w0, b0, ctxs)
    net.load_parameters(str(tmp_path / 'net.params'), ctx=ctxs)
    # Hyper-parameters given here are overridden by the saved optimizer, as in MXNet.
    trainer = gluon.Trainer(net.collect_params(), 'arsg', dict(HP, mu=0.5), **kwargs)
    trainer.load_states(str(tmp_path / 'trainer.states'))
    _train(net, trainer, x[half * BATCH:], y[half * BATCH:], ctxs, STEPS - half)
    for a, b in zip(_weights(net, ctxs[0]), uninterrupted):
        np.testing.assert_array_equal(a, b)


def test_module_fit_matches_reference():
    x, y, w0, b0 = _data(seed=2)
    data = mx.sym.Variable('data')
    label = mx.sym.Variable('label')
    fc = mx.sym.FullyConnected(data, num_hidden=OUT, name='fc')
    loss = mx.sym.MakeLoss(0.5 * mx.sym.mean(mx.sym.square(fc - label), axis=1))
    mod = mx.mod.Module(loss, data_names=['data'], label_names=['label'], context=mx.cpu())
    batches = mx.io.NDArrayIter(x, y, batch_size=BATCH, shuffle=False, label_name='label')
    mod.fit(batches, num_epoch=1, optimizer='arsg', optimizer_params=HP,
            eval_metric=mx.metric.Loss(),
            arg_params={'fc_weight': mx.nd.array(w0), 'fc_bias': mx.nd.array(b0)})
    args, _ = mod.get_params()
    # Module names parameters, and MXNet gives names not ending in _weight a wd_mult of 0.
    expected = _reference(x, y, w0, b0, bias_wd=0.0)
    np.testing.assert_allclose(args['fc_weight'].asnumpy(), expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(args['fc_bias'].asnumpy(), expected[1], rtol=1e-5, atol=1e-6)


# One case per optimizer of the package, and both ARSG paths.
SPARSE_CASES = [('defaults', False), ('defaults', True), ('adam_preconditioner', True),
                ('rsg', False), ('rsg', True), ('amsgrad', None), ('radam', None),
                ('ranger', None), ('lookahead_arsg', True)]
VOCAB, DIM = 7, 3


def _embedding_weights(case, fused, sparse, steps=8):
    """Train an embedding on a few tokens per step; returns the final weight as NumPy."""
    rng = np.random.default_rng(12)
    w0 = mx.nd.array(rng.uniform(-0.5, 0.5, size=(VOCAB, DIM)))
    if sparse:
        net = gluon.contrib.nn.SparseEmbedding(VOCAB, DIM)
    else:
        net = gluon.nn.Embedding(VOCAB, DIM, sparse_grad=True)
    net.initialize(mx.init.Constant(w0))
    trainer = gluon.Trainer(net.collect_params(), case.optimizer, _case_kwargs(case.id, fused))
    for _ in range(steps):
        tokens = mx.nd.array(rng.choice(VOCAB, size=3))
        coefficients = mx.nd.array(rng.normal(size=(3, DIM)))
        with autograd.record():
            loss = (net(tokens) * coefficients).sum()
        loss.backward()
        trainer.step(1)
    if sparse:
        return net.weight.row_sparse_data(mx.nd.arange(VOCAB)).asnumpy(), w0.asnumpy()
    return net.weight.data().asnumpy(), w0.asnumpy()


@pytest.mark.parametrize('case_id,fused', SPARSE_CASES,
                         ids=[path_id(c, f) for c, f in SPARSE_CASES])
def test_sparse_embedding_trains_like_embedding_with_sparse_gradients(case_id, fused):
    """A row_sparse weight (updated on the kvstore, as Trainer does for it) ends where a dense
    weight with the same row_sparse gradients does. Before the fix the update raised inside
    the kvstore callback, the exception was swallowed, and the weights never moved."""
    case = CASES_BY_ID[case_id]
    sparse, w0 = _embedding_weights(case, fused, sparse=True)
    dense, _ = _embedding_weights(case, fused, sparse=False)
    assert not np.array_equal(sparse, w0)
    np.testing.assert_allclose(sparse, dense, rtol=1e-6, atol=1e-7)


# The optimizers whose update depends on the parameter's step count t, and two that do not.
RESUME_CASES = [('adam_preconditioner', False), ('adam_preconditioner', True),
                ('begin_num_update_adam', True), ('radam', None), ('ranger', None),
                ('lookahead_arsg', False), ('lookahead_arsg', True), ('lookahead_sgd', None),
                ('amsgrad', None), ('rsg', True)]
# Lookahead around an MXNet optimizer (no NumPy reference in cases.py, so not in its table),
# and RSG with a scheduler, whose step otherwise does not depend on the count.
EXTRA_CASES = {'lookahead_sgd': ('lookahead', dict(optimizer='sgd', learning_rate=0.05,
                                                   momentum=0.9, k=3, alpha=0.5)),
               'rsg_lr_scheduler': ('rsg', dict(learning_rate=0.05, beta=0.9, mu=0.2,
                                                lr_scheduler=mx.lr_scheduler.FactorScheduler(
                                                    step=10, factor=0.5, base_lr=0.05)))}
RESUME_IDS = [path_id(c, f) for c, f in RESUME_CASES]


def _case_optimizer(case_id):
    if case_id in EXTRA_CASES:
        return EXTRA_CASES[case_id][0]
    return CASES_BY_ID[case_id].optimizer


def _case_kwargs(case_id, fused):
    if case_id in EXTRA_CASES:
        # A fresh scheduler per run: FactorScheduler keeps where it is.
        kwargs = copy.deepcopy(EXTRA_CASES[case_id][1])
    else:
        kwargs = CASES_BY_ID[case_id].make_kwargs()
    if fused is not None:
        kwargs['fused'] = fused
    return kwargs


# (devices saved from, devices loaded on, update_on_kvstore)
MOVES = {'cpu1-to-cpu0': ([mx.cpu(1)], [mx.cpu(0)], False),
         'cpu0+cpu1-to-cpu2+cpu3': ([mx.cpu(0), mx.cpu(1)], [mx.cpu(2), mx.cpu(3)], False),
         'cpu0+cpu1-to-cpu2+cpu3-on-kvstore': ([mx.cpu(0), mx.cpu(1)], [mx.cpu(2), mx.cpu(3)],
                                               True)}


@pytest.mark.parametrize('move', list(MOVES))
@pytest.mark.parametrize('case_id,fused', RESUME_CASES, ids=RESUME_IDS)
def test_states_saved_on_one_device_resume_on_another(tmp_path, case_id, fused, move):
    """5 steps on cpu(1), save_states; load_states on cpu(0), 3 more steps: the uninterrupted
    run's weights. MXNet counts updates per device, so the counts restarted at 1 (RAdam's
    warm-up, Lookahead's k-cycle, the 'adam' bias correction); they belong to the parameter."""
    saved_on, loaded_on, update_on_kvstore = MOVES[move]
    kvstore = 'device' if len(saved_on) > 1 else None
    optimizer = _case_optimizer(case_id)
    x, y, w0, b0 = _data(seed=3)
    steps, half = 8, 5

    def trainer_for(net):
        return gluon.Trainer(net.collect_params(), optimizer, _case_kwargs(case_id, fused),
                             kvstore=kvstore, update_on_kvstore=update_on_kvstore)

    net = _make_net(w0, b0, loaded_on)
    _train(net, trainer_for(net), x, y, loaded_on, steps)
    uninterrupted = _weights(net, loaded_on[0])

    net = _make_net(w0, b0, saved_on)
    trainer = trainer_for(net)
    _train(net, trainer, x, y, saved_on, half)
    net.save_parameters(str(tmp_path / 'net.params'))
    trainer.save_states(str(tmp_path / 'trainer.states'))

    net = _make_net(w0, b0, loaded_on)
    net.load_parameters(str(tmp_path / 'net.params'), ctx=loaded_on)
    trainer = trainer_for(net)
    trainer.load_states(str(tmp_path / 'trainer.states'))
    _train(net, trainer, x[half * BATCH:], y[half * BATCH:], loaded_on, steps - half)
    for ctx in loaded_on:
        for a, b in zip(_weights(net, ctx), uninterrupted):
            np.testing.assert_array_equal(a, b)


def _is_count_and_name(part):
    return (type(part) is tuple and len(part) == 2
            and all(isinstance(a, mx.nd.NDArray) for a in part)
            and (part[0].dtype, part[1].dtype) == (np.int64, np.uint8))


def _as_saved_by(state, version):
    """``state`` laid out as an earlier namsg saved it: ``'0.1.0'``, the same tuples of arrays
    without the update counts; ``'UpdateCount'``, with the count as an UpdateCount object where
    the pair (t, name) is now."""
    if not isinstance(state, tuple):
        return state
    parts = []
    for part in state:
        if not _is_count_and_name(part):
            parts.append(_as_saved_by(part, version))
        elif version == 'UpdateCount':
            parts.append(UpdateCount(int(part[0].asscalar()) or None))
    return tuple(parts)


def _rewrite_as_saved_by(fname, with_optimizer, version='0.1.0'):
    """Rewrite a states file (Trainer's ``(states, optimizer)`` or Module's states) as namsg
    ``version`` wrote it (see :func:`_as_saved_by`)."""
    with open(fname, 'rb') as f:
        saved = pickle.load(f)
    states = saved[0] if with_optimizer else saved
    states = {index: _as_saved_by(state, version) for index, state in states.items()}
    with open(fname, 'wb') as f:
        pickle.dump((states, saved[1]) if with_optimizer else states, f)


# The counts come from the optimizer in the file: nothing to warn about.
@pytest.mark.filterwarnings('error:optimizer states without their update counts')
@pytest.mark.filterwarnings('error::namsg.StatesRenamedWarning')
@pytest.mark.parametrize('version', ['0.1.0', 'UpdateCount'])
@pytest.mark.parametrize('case_id,fused', RESUME_CASES, ids=RESUME_IDS)
def test_trainer_states_saved_by_earlier_versions_still_resume(tmp_path, case_id, fused,
                                                               version):
    """Trainer.save_states files of namsg 0.1.0 (states without counts, the optimizer with
    them) and of the versions whose states ended in an UpdateCount object load and resume the
    uninterrupted run, on another device too."""
    optimizer = _case_optimizer(case_id)
    x, y, w0, b0 = _data(seed=3)
    steps, half = 8, 5
    net = _make_net(w0, b0, [mx.cpu(0)])
    _train(net, gluon.Trainer(net.collect_params(), optimizer, _case_kwargs(case_id, fused)),
           x, y, [mx.cpu(0)], steps)
    uninterrupted = _weights(net, mx.cpu(0))

    net = _make_net(w0, b0, [mx.cpu(1)])
    trainer = gluon.Trainer(net.collect_params(), optimizer, _case_kwargs(case_id, fused))
    _train(net, trainer, x, y, [mx.cpu(1)], half)
    trainer.save_states(str(tmp_path / 'trainer.states'))
    _rewrite_as_saved_by(str(tmp_path / 'trainer.states'), with_optimizer=True, version=version)

    net.save_parameters(str(tmp_path / 'net.params'))
    resumed = _make_net(w0, b0, [mx.cpu(0)])
    resumed.load_parameters(str(tmp_path / 'net.params'), ctx=[mx.cpu(0)])
    trainer = gluon.Trainer(resumed.collect_params(), optimizer, _case_kwargs(case_id, fused))
    trainer.load_states(str(tmp_path / 'trainer.states'))
    _train(resumed, trainer, x[half * BATCH:], y[half * BATCH:], [mx.cpu(0)], steps - half)
    for a, b in zip(_weights(resumed, mx.cpu(0)), uninterrupted):
        np.testing.assert_array_equal(a, b)


# -- resuming a Module from its checkpoint ----------------------------------------------------

# Every optimizer the package registers, on both ARSG paths, each with an update that depends on
# the parameter's step count t; ARSG's 'amsgrad' preconditioner, RSG and AMSGrad depend on it
# only through an lr_scheduler (here halving lr after update 10).
MODULE_RESUME_CASES = [('lr_scheduler', False), ('lr_scheduler', True),
                       ('adam_preconditioner', False), ('adam_preconditioner', True),
                       ('rsg_lr_scheduler', False), ('rsg_lr_scheduler', True),
                       ('amsgrad_wd_clip_scheduler', None), ('radam', None), ('ranger', None),
                       ('lookahead_arsg', False), ('lookahead_arsg', True),
                       ('lookahead_sgd', None)]
MODULE_RESUME_IDS = [path_id(c, f) for c, f in MODULE_RESUME_CASES]
# (contexts, kvstore, where the update runs). Module drops a kvstore for one device and
# otherwise updates on it unless MXNET_UPDATE_ON_KVSTORE=0. The updater's keys are
# device-and-parameter numbers in the Module, parameter names on the kvstore.
MODULE_SETUPS = {'no-kvstore': ('cpu0', None, 'module'),
                 'local-updater-in-module': ('cpu0+cpu1', 'local', 'module'),
                 'local-update-on-kvstore': ('cpu0+cpu1', 'local', 'kvstore'),
                 'device-update-on-kvstore': ('cpu0+cpu1', 'device', 'kvstore')}
# Resumed after epoch 1, that is update 7 of 14: past RAdam's warm-up (6 updates with
# beta2 = 0.9), in the middle of every k-cycle (k = 3, 4, 5), before the lr_scheduler's step.
MODULE_EPOCHS, MODULE_BATCHES = 2, 7


def _module_fit(monkeypatch, setup, case_id, fused, prefix, begin_epoch, **resume_params):
    """``Module.fit`` up to epoch MODULE_EPOCHS, saving a checkpoint with the optimizer states
    after every epoch (``mx.callback.module_checkpoint``); from ``prefix``'s checkpoint of
    ``begin_epoch`` (``Module.load``) if > 0, with ``resume_params`` added to the optimizer's.
    Returns the final parameters as NumPy."""
    contexts, kvstore, update_on = MODULE_SETUPS[setup]
    monkeypatch.setenv('MXNET_UPDATE_ON_KVSTORE', '1' if update_on == 'kvstore' else '0')
    x, y, w0, b0 = _data(seed=4)
    names = dict(data_names=['data'], label_names=['label'], context=CONTEXTS[contexts])
    if begin_epoch:
        mod = mx.mod.Module.load(prefix, begin_epoch, load_optimizer_states=True, **names)
        initial = None
    else:
        data, label = mx.sym.Variable('data'), mx.sym.Variable('label')
        fc = mx.sym.FullyConnected(data, num_hidden=OUT, name='fc')
        mod = mx.mod.Module(mx.sym.MakeLoss(0.5 * mx.sym.mean(mx.sym.square(fc - label), axis=1)),
                            **names)
        initial = {'fc_weight': mx.nd.array(w0), 'fc_bias': mx.nd.array(b0)}
    rows = MODULE_BATCHES * BATCH
    mod.fit(mx.io.NDArrayIter(x[:rows], y[:rows], batch_size=BATCH, label_name='label'),
            begin_epoch=begin_epoch, num_epoch=MODULE_EPOCHS, kvstore=kvstore,
            optimizer=_case_optimizer(case_id),
            optimizer_params=dict(_case_kwargs(case_id, fused), **resume_params),
            eval_metric=mx.metric.Loss(), arg_params=initial,
            epoch_end_callback=mx.callback.module_checkpoint(mod, prefix,
                                                             save_optimizer_states=True))
    assert mod._update_on_kvstore == (update_on == 'kvstore')
    return [a.asnumpy() for _, a in sorted(mod.get_params()[0].items())]


@pytest.mark.filterwarnings('ignore:Parameters already initialized')
@pytest.mark.parametrize('setup', list(MODULE_SETUPS))
@pytest.mark.parametrize('case_id,fused', MODULE_RESUME_CASES, ids=MODULE_RESUME_IDS)
def test_module_checkpoint_resumes_the_uninterrupted_run(monkeypatch, tmp_path, case_id, fused,
                                                         setup):
    """Checkpoints with optimizer states after every epoch; Module.load of epoch 1 and
    fit(begin_epoch=1): the uninterrupted run's weights, bit for bit, with no begin_num_update.
    Module saves the states without the optimizer, whose counts they were: the counts restarted
    at begin_num_update (RAdam's warm-up, Lookahead's k-cycle, the 'adam' bias correction and
    the lr_scheduler started over)."""
    run = functools.partial(_module_fit, monkeypatch, setup, case_id, fused,
                            str(tmp_path / 'model'))
    uninterrupted = run(0)
    for a, b in zip(run(MODULE_EPOCHS // 2), uninterrupted):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings('ignore:Parameters already initialized')
@pytest.mark.parametrize('setup', ['no-kvstore', 'local-update-on-kvstore'])
@pytest.mark.parametrize('case_id,fused', MODULE_RESUME_CASES, ids=MODULE_RESUME_IDS)
def test_module_checkpoint_without_counts_warns_and_resumes_with_begin_num_update(
        monkeypatch, tmp_path, case_id, fused, setup):
    """A Module checkpoint of namsg 0.1.0 has no counts: it still loads, resuming warns that
    the counts restart, and begin_num_update = the updates done resumes the uninterrupted run."""
    prefix = str(tmp_path / 'model')
    run = functools.partial(_module_fit, monkeypatch, setup, case_id, fused, prefix)
    uninterrupted = run(0)
    _rewrite_as_saved_by('%s-%04d.states' % (prefix, MODULE_EPOCHS // 2),
                         with_optimizer=False)
    with pytest.warns(UserWarning, match='begin_num_update=<number of updates done>'):
        run(MODULE_EPOCHS // 2)
    resumed = run(MODULE_EPOCHS // 2, begin_num_update=MODULE_EPOCHS // 2 * MODULE_BATCHES)
    for a, b in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings('ignore:Parameters already initialized')
@pytest.mark.filterwarnings('error:optimizer states without their update counts')
@pytest.mark.filterwarnings('error::namsg.StatesRenamedWarning')
@pytest.mark.parametrize('setup', ['no-kvstore', 'local-update-on-kvstore'])
@pytest.mark.parametrize('case_id,fused', MODULE_RESUME_CASES, ids=MODULE_RESUME_IDS)
def test_module_checkpoint_with_update_count_objects_resumes_exactly(monkeypatch, tmp_path,
                                                                      case_id, fused, setup):
    """A Module checkpoint whose states end in UpdateCount objects (namsg before the count
    became an NDArray) resumes the uninterrupted run bit for bit, without begin_num_update."""
    prefix = str(tmp_path / 'model')
    run = functools.partial(_module_fit, monkeypatch, setup, case_id, fused, prefix)
    uninterrupted = run(0)
    _rewrite_as_saved_by('%s-%04d.states' % (prefix, MODULE_EPOCHS // 2), with_optimizer=False,
                         version='UpdateCount')
    for a, b in zip(run(MODULE_EPOCHS // 2), uninterrupted):
        np.testing.assert_array_equal(a, b)


def _module_embedding_weight(case, fused, sparse, steps=6):
    """The Module API on an embedding with a row_sparse weight variable (or a dense one with
    row_sparse gradients); returns the final weight and the initial one."""
    rng = np.random.default_rng(13)
    w0 = rng.uniform(-0.5, 0.5, size=(VOCAB, DIM))
    data, coefficients = mx.sym.Variable('data'), mx.sym.Variable('coef')
    if sparse:
        embedded = mx.sym.contrib.SparseEmbedding(
            data, weight=mx.sym.Variable('embed_weight', stype='row_sparse'), input_dim=VOCAB,
            output_dim=DIM)
    else:
        embedded = mx.sym.Embedding(data, weight=mx.sym.Variable('embed_weight'),
                                    input_dim=VOCAB, output_dim=DIM, sparse_grad=True)
    mod = mx.mod.Module(mx.sym.MakeLoss(mx.sym.sum(embedded * coefficients)),
                        data_names=['data'], label_names=['coef'], context=mx.cpu())
    mod.bind(data_shapes=[('data', (3,))], label_shapes=[('coef', (3, DIM))])
    mod.init_params(arg_params={'embed_weight': mx.nd.array(w0)})
    mod.init_optimizer(optimizer=case.optimizer, optimizer_params=_case_kwargs(case.id, fused))
    for _ in range(steps):
        mod.forward_backward(mx.io.DataBatch([mx.nd.array(rng.choice(VOCAB, size=3))],
                                             [mx.nd.array(rng.normal(size=(3, DIM)))]))
        mod.update()
    return mod.get_params()[0]['embed_weight'].asnumpy(), w0


@pytest.mark.parametrize('case_id,fused', SPARSE_CASES,
                         ids=[path_id(c, f) for c, f in SPARSE_CASES])
def test_module_with_row_sparse_weight_trains_like_dense_weight(case_id, fused):
    """Module updates in the caller's process: before the fix it raised a bare AssertionError
    (row_sparse arrays take no row assignment)."""
    case = CASES_BY_ID[case_id]
    sparse, w0 = _module_embedding_weight(case, fused, sparse=True)
    dense, _ = _module_embedding_weight(case, fused, sparse=False)
    assert not np.allclose(sparse, w0)
    np.testing.assert_allclose(sparse, dense, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('update_on_kvstore', [False, True])
@pytest.mark.parametrize('optimizer,kwargs', [('arsg', {}), ('rsg', {}), ('amsgrad', {}),
                                              ('radam', {}), ('ranger', {}),
                                              ('lookahead', {'optimizer': 'arsg'})])
def test_trainer_refuses_integer_parameters_at_construction(optimizer, kwargs,
                                                            update_on_kvstore):
    """On a kvstore the update runs in a callback whose exceptions MXNet only prints (the
    weights then never move): the dtype is checked when Trainer hands its Parameters over.
    Parameters without gradients (grad_req='null') are not updated and may be integers."""
    ctxs = [mx.cpu(0), mx.cpu(1)]
    counter = gluon.Parameter('counter', shape=(2,), dtype='int32', grad_req='null')
    weight = gluon.Parameter('weight', shape=(2, 2), dtype='int32')
    for param in (counter, weight):
        param.initialize(mx.init.Zero(), ctx=ctxs)
    gluon.Trainer([counter], optimizer, kwargs, kvstore='device',
                  update_on_kvstore=update_on_kvstore)
    with pytest.raises(ValueError, match="Parameter 'weight' of dtype int32: floating point"):
        gluon.Trainer([counter, weight], optimizer, kwargs, kvstore='device',
                      update_on_kvstore=update_on_kvstore)
