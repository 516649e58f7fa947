"""Non-finite gradients (NaN, +inf, -inf), for every optimizer of the package and both ARSG paths:

* by default the fused and NDArray paths leave the same weights and the same state in every
  slot (NaN where NaN), and follow the NumPy reference's IEEE arithmetic;
* ``skip_nonfinite_grad=True`` leaves a parameter whose gradient is not finite untouched at that
  step (weight, every state slot, update count): the run equals the reference without those
  steps for those arrays; the skips are counted and each parameter warned about once.

The poisoned steps and elements are the table in cases.py (POISONS x NONFINITE_CASE_IDS)."""

import re
import warnings

import mxnet as mx
import numpy as np
import pytest

import namsg  # noqa: F401  (registers the optimizers)
import dist_nonfinite_worker
import test_dist
import test_gluon
from cases import CASES_BY_ID, NONFINITE, NONFINITE_IDS, POISONS, path_id
from harness import flat_states, make_problem, run_mxnet, run_reference as _run_reference

STEPS = 8


def _problem(poison, seed=21):
    weights, grads = make_problem(STEPS, seed=seed)
    weights = [w.astype(np.float32) for w in weights]
    return weights, poison.apply([[g.astype(np.float32) for g in gs] for gs in grads])


def run_reference(*args, **kwargs):
    with np.errstate(invalid='ignore', over='ignore'):     # NaN and inf are the point here
        return _run_reference(*args, **kwargs)


def _states(updater, n):
    return [[s.asnumpy() for s in flat_states(updater.states[i])] for i in range(n)]


def _counts(updater, n):
    return [updater.optimizer._index_update_count.get(i) for i in range(n)]


FUSABLE = [(case, poison) for case, fused, poison in NONFINITE if fused]


@pytest.mark.parametrize('case,poison', FUSABLE,
                         ids=['%s-%s' % (c.id, p.id) for c, p in FUSABLE])
@pytest.mark.parametrize('dtype,multi_precision', [('float32', False), ('float64', False),
                                                   ('float16', True), ('float16', False)])
def test_fused_and_ndarray_paths_agree_on_every_slot(case, poison, dtype, multi_precision):
    """Weights and every state slot, NaN for NaN. Before the fix a NaN gradient left the fused
    path's vhat finite (std::max) where the NDArray path stored NaN (broadcast_maximum), and
    with wd = 0 a weight turned NaN made the fused path's next gradients NaN (0 * NaN) where
    the NDArray path, which left the term out, kept its moments finite."""
    weights, grads = _problem(poison)
    runs = {fused: run_mxnet(case, weights, grads, dtype=dtype, multi_precision=multi_precision,
                             fused=fused) for fused in (False, True)}
    (w_nd, up_nd), (w_fused, up_fused) = runs[False], runs[True]
    # Clipping turns an infinite gradient element into a finite one; NaN passes it.
    clipped = (case.kwargs.get('clip_gradient') or 0) > 0 and \
        not any(np.isnan(value) for _, _, _, value in poison.entries)
    assert any(np.isnan(w).any() for w in w_nd) != clipped
    if dtype == 'float64':
        # MXNet 1.9's scalar operators parse their scalar inexactly (0.01 = 1 - 0.99 becomes
        # 0.010000000000000007): the paths differ in the last bits of float64 (not float32).
        rtol = 1e-12
    else:
        rtol = 0
    for i in range(len(weights)):
        np.testing.assert_allclose(w_nd[i], w_fused[i], rtol=rtol, atol=0,
                                   err_msg='%s: weight %d' % (case.id, i))
        for slot, (a, b) in enumerate(zip(*(_states(up, len(weights))[i]
                                            for up in (up_nd, up_fused)))):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=0,
                                       err_msg='%s: array %d, state slot %d' % (case.id, i, slot))


@pytest.mark.parametrize('case,fused,poison', NONFINITE, ids=NONFINITE_IDS)
def test_nonfinite_gradients_follow_the_reference(case, fused, poison):
    """IEEE arithmetic as the reference computes it, in weights and states: NaN where the
    equations give NaN (np.maximum propagates it into vhat; 0 * inf and inf - inf are NaN), an
    infinity where they give one, the same finite values elsewhere."""
    weights, grads = _problem(poison)
    actual, updater = run_mxnet(case, weights, grads, dtype='float32', fused=fused)
    expected, expected_states = run_reference(case, weights, grads, with_states=True)
    states = _states(updater, len(weights))
    for i in range(len(weights)):
        for what, a, e in [('weight', actual[i], expected[i])] + [
                ('state slot %d' % s, a, e) for s, (a, e) in enumerate(zip(states[i],
                                                                            expected_states[i]))]:
            np.testing.assert_array_equal(np.isnan(a), np.isnan(e),
                                          err_msg='%s: array %d %s: NaN' % (case.id, i, what))
            np.testing.assert_array_equal(np.isinf(a), np.isinf(e),
                                          err_msg='%s: array %d %s: inf' % (case.id, i, what))
            scale = max(1.0, np.abs(np.nan_to_num(e, posinf=0, neginf=0)).max())
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * scale,
                                       err_msg='%s: array %d %s' % (case.id, i, what))


@pytest.mark.parametrize('case,fused,poison', NONFINITE, ids=NONFINITE_IDS)
def test_skip_nonfinite_grad_leaves_the_parameter_as_if_the_step_had_not_been(case, fused,
                                                                             poison):
    """The run equals the reference run without the poisoned steps of the poisoned arrays
    (their update counts lag by the skips, which the bias corrections and Lookahead's k-cycle
    follow); each skip is counted; each skipped parameter warned about once."""
    weights, grads = _problem(poison)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        actual, updater = run_mxnet(case, weights, grads, dtype='float32', fused=fused,
                                    skip_nonfinite_grad=True)
    skip = {i: poison.steps(i) for i in range(len(weights))}
    expected, expected_states = run_reference(case, weights, grads, skip=skip, with_states=True)
    states = _states(updater, len(weights))
    for i in range(len(weights)):
        assert np.isfinite(actual[i]).all() and all(np.isfinite(s).all() for s in states[i])
        np.testing.assert_allclose(actual[i], expected[i], rtol=1e-5, atol=1e-5,
                                   err_msg='%s: weight %d' % (case.id, i))
        for slot, (a, e) in enumerate(zip(states[i], expected_states[i])):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5,
                                       err_msg='%s: array %d, state slot %d' % (case.id, i, slot))
    begin = case.kwargs.get('begin_num_update', 0)
    assert _counts(updater, len(weights)) == [begin + STEPS - len(skip[i])
                                              for i in range(len(weights))]
    assert updater.optimizer.nonfinite_skips == {i: len(s) for i, s in skip.items() if s}
    skipped = [w for w in caught if issubclass(w.category, RuntimeWarning)
               and 'skipped the update' in str(w.message)]
    assert sorted(int(re.search(r'index (\d+)', str(w.message)).group(1)) for w in skipped) == \
        sorted(i for i, s in skip.items() if s), [str(w.message) for w in skipped]


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
@pytest.mark.parametrize('fused', [False, True], ids=['ndarray', 'fused'])
def test_an_inner_optimizer_that_skips_leaves_lookaheads_k_cycle_alone(fused, dtype):
    """Lookahead around an optimizer of the package that skips itself (its own
    skip_nonfinite_grad), several parameters per call: the skipped parameter's weight, slow
    weights, inner state, k-cycle and both counts (the inner state's and Lookahead's) end as
    in a run that never gave it that step; the other parameter's as if nothing was skipped.
    The step skipped comes when the count is a multiple of k: a slow step taken again there
    moves float16 weights' float32 slow weights by the weight's rounding."""
    rng = np.random.default_rng(5)
    shapes = [(3, 2), (4,)]
    w0 = [rng.normal(size=s).astype(dtype) for s in shapes]
    grads = [[rng.normal(size=s).astype(dtype) for s in shapes] for _ in range(6)]
    grads[2][1][0] = np.nan             # parameter 1, step 2 (count 2 = k): skipped

    def run(left_out):
        updater = mx.optimizer.get_updater(namsg.Lookahead(
            namsg.ARSG(learning_rate=0.01, fused=fused, skip_nonfinite_grad=True), k=2))
        weights = [mx.nd.array(w, dtype=dtype) for w in w0]
        for step, gs in enumerate(grads):
            indices = [i for i in range(len(shapes)) if (step, i) not in left_out]
            updater(indices, [mx.nd.array(gs[i], dtype=dtype) for i in indices],
                    [weights[i] for i in indices])
        return updater, weights

    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        skipped, skipped_weights = run(set())
    expected, expected_weights = run({(2, 1)})
    assert skipped.optimizer.optimizer.nonfinite_skips == {1: 1}
    for i in range(len(shapes)):
        np.testing.assert_array_equal(skipped_weights[i].asnumpy(),
                                      expected_weights[i].asnumpy())
        for a, e in zip(flat_states(skipped.states[i]), flat_states(expected.states[i])):
            np.testing.assert_array_equal(a.asnumpy(), e.asnumpy())
        counts = [skipped.states[i][-1][0].asscalar(), skipped.states[i][1][-1][0].asscalar()]
        assert counts == [6 - i] * 2


# Rows stored by the row_sparse gradients: every poisoned element of POISONS is in one.
STORED_ROWS = [r for r in range(40) if r % 4 != 1]


@pytest.mark.parametrize('skip', [False, True], ids=['default', 'skip_nonfinite_grad'])
@pytest.mark.parametrize('case,fused,poison', NONFINITE, ids=NONFINITE_IDS)
def test_lazy_rows_of_row_sparse_gradients_take_the_dense_update(case, fused, poison, skip):
    """row_sparse gradients (lazy_update): the stored rows end, in weights and every state
    slot, exactly as the same rows of a dense run (on the same path, fused or not: a sparse
    gradient takes the NDArray path) with NaN and infinities; the other rows keep their
    initial values; skip_nonfinite_grad skips the same steps."""
    weights, grads = _problem(poison)
    extra = dict(skip_nonfinite_grad=True) if skip else {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        sparse, up_sparse = run_mxnet(case, weights, grads, fused=fused, rows=STORED_ROWS,
                                      **extra)
        dense, up_dense = run_mxnet(case, weights, grads, fused=fused, **extra)
    states = {name: _states(up, len(weights)) for name, up in
              (('sparse', up_sparse), ('dense', up_dense))}
    if skip:
        assert up_sparse.optimizer.nonfinite_skips == up_dense.optimizer.nonfinite_skips != {}
    for i, w0 in enumerate(weights):
        stored = np.zeros(w0.shape[0], bool)
        stored[[r for r in STORED_ROWS if r < w0.shape[0]]] = True
        np.testing.assert_array_equal(sparse[i][stored], dense[i][stored],
                                      err_msg='%s: weight %d' % (case.id, i))
        np.testing.assert_array_equal(sparse[i][~stored], w0[~stored],
                                      err_msg='%s: weight %d, rows not stored' % (case.id, i))
        initial = [s.asnumpy() for s in flat_states(
            up_sparse.optimizer.create_state(i, mx.nd.array(w0)))]
        for slot, (a, b, a0) in enumerate(zip(states['sparse'][i], states['dense'][i], initial)):
            what = '%s: array %d, state slot %d' % (case.id, i, slot)
            np.testing.assert_array_equal(a[stored], b[stored], err_msg=what)
            np.testing.assert_array_equal(a[~stored], a0[~stored], err_msg=what + ', not stored')


@pytest.mark.parametrize('fused', [False, True], ids=['ndarray', 'fused'])
def test_skip_leaves_the_float16_weight_and_its_master_copy(fused):
    """multi_precision: the float32 master copy, the float16 weight and the states."""
    case, poison = CASES_BY_ID['defaults'], POISONS[0]
    weights, grads = _problem(poison)
    weights16 = [w.astype(np.float16).astype(np.float64) for w in weights]
    grads16 = [[g.astype(np.float16) for g in gs] for gs in grads]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        actual, updater = run_mxnet(case, weights16, grads16, dtype='float16',
                                    multi_precision=True, fused=fused, skip_nonfinite_grad=True)
    expected = run_reference(case, weights16, grads16, skip={0: poison.steps(0)})
    masters = [updater.states[i][0].asnumpy() for i in range(len(weights))]
    for i in range(len(weights)):
        np.testing.assert_allclose(masters[i], expected[i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(actual[i], expected[i], rtol=2 ** -10, atol=1e-5)
    assert updater.optimizer.nonfinite_skips == {0: 1}


def test_skip_nonfinite_grad_is_checked_like_every_setting():
    for name in ('arsg', 'rsg', 'amsgrad', 'radam', 'ranger', 'lookahead'):
        with pytest.raises(ValueError, match='skip_nonfinite_grad=1 is an int'):
            mx.optimizer.create(name, skip_nonfinite_grad=1)
        opt = mx.optimizer.create(name)
        assert opt.skip_nonfinite_grad is False and opt.nonfinite_skips == {}
        with pytest.raises(ValueError, match="skip_nonfinite_grad='yes'"):
            opt.skip_nonfinite_grad = 'yes'
        opt.skip_nonfinite_grad = True
        assert opt.skip_nonfinite_grad is True
        assert 'skip_nonfinite_grad' in namsg.kvstore_sync.server_settings(opt)


def test_names_in_the_counts_and_the_warning():
    """Module's idx2name (and Gluon's param_dict, see test_trainer_*) name the parameter."""
    opt = mx.optimizer.create('arsg', skip_nonfinite_grad=True,
                              param_idx2name={0: 'fc_weight', 1: 'fc_bias'})
    updater = mx.optimizer.get_updater(opt)
    weights = [mx.nd.ones((2, 3)), mx.nd.ones((2,))]
    grads = [mx.nd.array([[1, np.inf, 0], [0, 0, 0]]), mx.nd.ones((2,))]
    with pytest.warns(RuntimeWarning, match=r"parameter 'fc_weight' \(index 0\): its gradient "
                                            r"has a NaN or infinite element"):
        updater([0, 1], grads, weights)
    assert opt.nonfinite_skips == {'fc_weight': 1}
    np.testing.assert_array_equal(weights[0].asnumpy(), np.ones((2, 3)))
    assert not np.array_equal(weights[1].asnumpy(), np.ones((2,)))


# -- Trainer and Module, with and without kvstores -----------------------------------------------

# The least-squares model of test_gluon, and its reference with a skipped step.
TRAIN_STEPS, POISON_STEP = 6, 3
HP, BATCH, IN, OUT = test_gluon.HP, test_gluon.BATCH, test_gluon.IN, test_gluon.OUT


def _least_squares_reference(bias_wd=1.0, skip=None):
    return test_gluon._reference(*test_gluon._data(), bias_wd=bias_wd, steps=TRAIN_STEPS,
                                 skip=skip)


TRAINER_SETUPS = [(1, None, False), (2, 'local', False), (2, 'local', True), (2, 'device', True)]


@pytest.mark.parametrize('fused', [False, True], ids=['ndarray', 'fused'])
@pytest.mark.parametrize('devices,kvstore,update_on_kvstore', TRAINER_SETUPS)
def test_trainer_skips_a_nan_gradient(devices, kvstore, update_on_kvstore, fused):
    """A NaN put into the weight's gradient (on the last device) before Trainer.step: every device
    ends with the reference's weights without that step for the weight (the bias still steps);
    counted once under the Parameter's name, whatever the number of devices."""
    from mxnet import gluon
    ctxs = [mx.cpu(i) for i in range(devices)]
    x, y, w0, b0 = test_gluon._data()
    net = test_gluon._make_net(w0, b0, ctxs)
    trainer = gluon.Trainer(net.collect_params(), 'arsg',
                            dict(HP, fused=fused, skip_nonfinite_grad=True),
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    dist_nonfinite_worker.poison_step(net, trainer, ctxs, POISON_STEP)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        test_gluon._train(net, trainer, x, y, ctxs, TRAIN_STEPS)
    expected = _least_squares_reference(skip={'w': POISON_STEP})
    for ctx in ctxs:
        np.testing.assert_allclose(net.weight.data(ctx).asnumpy(), expected[0], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(net.bias.data(ctx).asnumpy(), expected[1], rtol=1e-5,
                                   atol=1e-6)
    assert trainer.optimizer.nonfinite_skips == {net.weight.name: 1}
    assert len([w for w in caught if net.weight.name in str(w.message)]) == 1


@pytest.mark.parametrize('fused', [False, True], ids=['ndarray', 'fused'])
@pytest.mark.parametrize('devices,kvstore', [(1, None), (2, 'local'), (2, 'device')])
def test_module_skips_a_nan_gradient(devices, kvstore, fused):
    """Module (with its updates on the kvstore when it has one): as for Trainer; the
    parameter is named by Module's idx2name."""
    x, y, w0, b0 = test_gluon._data()
    data, label = mx.sym.Variable('data'), mx.sym.Variable('label')
    fc = mx.sym.FullyConnected(data, num_hidden=OUT, name='fc')
    loss = mx.sym.MakeLoss(0.5 * mx.sym.mean(mx.sym.square(fc - label), axis=1))
    mod = mx.mod.Module(loss, data_names=['data'], label_names=['label'],
                        context=[mx.cpu(i) for i in range(devices)])
    mod.bind([('data', (BATCH, IN))], [('label', (BATCH, OUT))])
    mod.init_params(arg_params={'fc_weight': mx.nd.array(w0), 'fc_bias': mx.nd.array(b0)})
    mod.init_optimizer(kvstore=kvstore, optimizer='arsg', optimizer_params=dict(
        HP, fused=fused, skip_nonfinite_grad=True, rescale_grad=1.0 / BATCH))
    weight_index = mod._exec_group.param_names.index('fc_weight')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for k in range(TRAIN_STEPS):
            mod.forward_backward(mx.io.DataBatch(
                [mx.nd.array(x[k * BATCH:(k + 1) * BATCH])],
                [mx.nd.array(y[k * BATCH:(k + 1) * BATCH])]))
            if k + 1 == POISON_STEP:
                mod._exec_group.grad_arrays[weight_index][-1][0, 1] = -np.inf
            mod.update()
    args, _ = mod.get_params()
    # Module names its parameters: those not ending in _weight get wd_mult 0.
    expected = _least_squares_reference(bias_wd=0.0, skip={'w': POISON_STEP})
    np.testing.assert_allclose(args['fc_weight'].asnumpy(), expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(args['fc_bias'].asnumpy(), expected[1], rtol=1e-5, atol=1e-6)
    assert mod._optimizer.nonfinite_skips == {'fc_weight': 1}
    assert len([w for w in caught if "'fc_weight'" in str(w.message)]) == 1


@pytest.mark.parametrize('update_on_kvstore', [True, False])
def test_dist_sync_job_skips_a_nan_gradient(tmp_path, update_on_kvstore):
    """Two workers and a server (dist_sync); rank 0's weight gradient has a NaN at step 3, so
    the summed gradient has one. Both workers end with the weights of one process that skips
    that step for the weight. With updates on the server, the server's optimizer skips, counts
    and warns (its warning is in the job's output) and the workers' copies count nothing; with
    updates on the workers each worker's optimizer does."""
    import io
    import json
    import os
    import sys
    from pathlib import Path
    import namsg_dist
    params = dict(HP, skip_nonfinite_grad=True)
    env = dict(OUT=str(tmp_path), STEPS=str(TRAIN_STEPS), POISON_STEP=str(POISON_STEP),
               OPTIMIZER_PARAMS=json.dumps(params),
               UPDATE_ON_KVSTORE=str(int(update_on_kvstore)),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent),
                                           str(Path(__file__).parent),
                                           os.environ.get('PYTHONPATH', '')]))
    out = io.StringIO()
    status = namsg_dist.launch_local(
        [sys.executable, str(Path(__file__).with_name('dist_nonfinite_worker.py'))],
        num_workers=2, num_servers=1, timeout=120, env=env, out=out)
    assert status == 0, out.getvalue()[-3000:]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        expected = dist_nonfinite_worker.poisoned_local_run(params, TRAIN_STEPS, 2, POISON_STEP)
    for rank in range(2):
        result = np.load(tmp_path / ('rank%d.npz' % rank))
        np.testing.assert_allclose(result['weight'], expected[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result['bias'], expected[1], rtol=1e-5, atol=1e-6)
        skips = json.loads(str(result['skips']))
        assert skips == ({} if update_on_kvstore else {'dense0_weight': 1})
    log = out.getvalue()
    assert log.count("skipped the update of parameter 'dense0_weight'") == \
        (1 if update_on_kvstore else 2), log
    if update_on_kvstore:
        assert "[server 0] " in log.split("skipped the update of parameter 'dense0_weight'")[0] \
            .splitlines()[-1], log


@pytest.mark.parametrize('skip', [False, True], ids=['default', 'skip_nonfinite_grad'])
@pytest.mark.parametrize('case_id,fused', test_gluon.SPARSE_CASES,
                         ids=[path_id(c, f) for c, f in test_gluon.SPARSE_CASES])
def test_row_sparse_weight_with_a_nan_gradient_ends_as_a_dense_one(case_id, fused, skip):
    """SparseEmbedding (row_sparse weight, updated on the kvstore by Trainer) against Embedding
    with sparse gradients (dense weight), a NaN in one looked-up row's gradient at step 3: the
    same weights, NaN for NaN (by default) or that step skipped for the weight."""
    from mxnet import autograd, gluon
    case = CASES_BY_ID[case_id]
    vocab, dim = test_gluon.VOCAB, test_gluon.DIM
    rng = np.random.default_rng(31)
    w0 = rng.uniform(-0.5, 0.5, size=(vocab, dim))
    batches = [(rng.choice(vocab, size=3), rng.normal(size=(3, dim))) for _ in range(6)]
    batches[2][1][1, 0] = np.nan
    finals = []
    for net in (gluon.contrib.nn.SparseEmbedding(vocab, dim),
                gluon.nn.Embedding(vocab, dim, sparse_grad=True)):
        net.initialize(mx.init.Constant(mx.nd.array(w0)))
        kwargs = dict(test_gluon._case_kwargs(case_id, fused), skip_nonfinite_grad=skip)
        trainer = gluon.Trainer(net.collect_params(), case.optimizer, kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)
            for tokens, coefficients in batches:
                with autograd.record():
                    loss = (net(mx.nd.array(tokens)) * mx.nd.array(coefficients)).sum()
                loss.backward()
                trainer.step(1)
        finals.append(net.weight.row_sparse_data(mx.nd.arange(vocab)).asnumpy()
                      if net.weight._stype == 'row_sparse' else net.weight.data().asnumpy())
        assert trainer.optimizer.nonfinite_skips == ({net.weight.name: 1} if skip else {})
    sparse, dense = finals
    assert np.isnan(sparse).any() != skip
    np.testing.assert_allclose(sparse, dense, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('name,kwargs', test_dist.SERVER_CASES, ids=test_dist.SERVER_IDS)
def test_skip_nonfinite_grad_set_on_the_worker_reaches_the_servers(monkeypatch, name, kwargs):
    """Turned on after the optimizer was sent to a server (as Trainer sends it): the server's
    copy takes it, with its states and counts, as for every other setting (one command)."""
    served, _, sent = test_dist._served_and_local(
        monkeypatch, name, kwargs, {2: test_dist._assign(skip_nonfinite_grad=True)})
    assert served.skip_nonfinite_grad is True
    assert sent == 2          # the optimizer, then the setting
