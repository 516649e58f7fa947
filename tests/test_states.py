"""Optimizer states as MXNet's tools expect them (tuples of NDArrays ending in the update count
and the parameter's name), and the checks of states loaded onto parameters (Trainer and
Module, both ARSG paths, every optimizer of the package)."""

import inspect
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.test_utils import compare_optimizer

import namsg
from cases import path_id

# (registered name, arguments, fused): every optimizer of the package, both ARSG paths.
OPTIMIZERS = [('arsg', {}, False), ('arsg', {}, True), ('arsg', {'preconditioner': 'adam'}, True),
              ('rsg', {}, False), ('rsg', {}, True), ('amsgrad', {}, None), ('radam', {}, None),
              ('ranger', {}, None), ('lookahead', {'optimizer': 'arsg'}, True),
              ('lookahead', {'optimizer': 'sgd', 'momentum': 0.9}, None)]
OPTIMIZER_IDS = [path_id('%s%s' % (name, ''.join('-%s' % v for v in kwargs.values())), fused)
                 for name, kwargs, fused in OPTIMIZERS]


def _create(name, kwargs, fused, **more):
    kwargs = dict(kwargs, **more)
    if fused is not None:
        kwargs['fused'] = fused
    return mx.optimizer.create(name, **kwargs)


def _arrays(state):
    if isinstance(state, tuple):
        return [a for part in state for a in _arrays(part)]
    return [] if state is None else [state]


# -- item 6: states that MXNet's tools can read ----------------------------------------------

@pytest.mark.parametrize('dtype', ['float32', 'float64'])
@pytest.mark.parametrize('name,kwargs,fused', OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_mxnet_compare_optimizer_compares_the_states(name, kwargs, fused, dtype):
    """MXNet's own harness with state comparison (its tests/python/unittest/test_optimizer.py
    way): the NDArray path against the fused one where there is one. It failed on the
    UpdateCount object that ended each state ('UpdateCount' object has no attribute 'dtype')."""
    reference = _create(name, kwargs, False if fused is not None else None, wd=0.01)
    compare_optimizer(reference, _create(name, kwargs, fused, wd=0.01), (5, 3), dtype,
                      rtol=1e-5, atol=1e-6, compare_states=True)
    if name in ('arsg', 'rsg') and 'ntensors' in inspect.signature(compare_optimizer).parameters:
        # Several tensors in one call, as the Updater aggregates them for the fused operator
        # (MXNet 1.6 and later test them so).
        compare_optimizer(_create(name, kwargs, False, wd=0.01),
                          _create(name, kwargs, fused, wd=0.01), [(4, 2), (3,), (1,)], dtype,
                          rtol=1e-5, atol=1e-6, compare_states=True, ntensors=3)


@pytest.mark.parametrize('name,kwargs,fused', OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_states_are_ndarrays_that_move_save_and_measure(tmp_path, name, kwargs, fused):
    """What code written for MXNet's states does with them: every leaf is an NDArray (or MXNet's
    None state); they move to another device with the Updater's sync_state_context and the
    update continues there with the count they carry; nd.save / nd.load round-trips them;
    their size adds up. Failed on the UpdateCount object."""
    opt = _create(name, kwargs, fused)
    updater = mx.optimizer.get_updater(opt)
    weight = mx.nd.array(np.linspace(-1, 1, 12).reshape(4, 3), ctx=mx.cpu(0))
    grad = mx.nd.array(np.linspace(2, -1, 12).reshape(4, 3), ctx=mx.cpu(0))
    for _ in range(3):
        updater(0, grad, weight)
    state = updater.states[0]
    leaves = _arrays(state)
    assert leaves and all(isinstance(a, mx.nd.NDArray) for a in leaves), state
    count, name_bytes = state[-1]
    assert count.asnumpy().tolist() == [3] and not name_bytes.asnumpy().any()
    assert sum(a.size * np.dtype(a.dtype).itemsize for a in leaves) > 0

    mx.nd.save(str(tmp_path / 'state'), leaves)
    for saved, loaded in zip(leaves, mx.nd.load(str(tmp_path / 'state'))):
        np.testing.assert_array_equal(saved.asnumpy(), loaded.asnumpy())

    # A new optimizer on another device, given the moved state, counts on from 3.
    moved = updater.sync_state_context(state, mx.cpu(1))
    assert all(a.context == mx.cpu(1) for a in _arrays(moved))
    other = mx.optimizer.get_updater(_create(name, kwargs, fused))
    other.states[0], other.states_synced[0] = moved, True
    weight1 = weight.as_in_context(mx.cpu(1))
    other(0, grad.as_in_context(mx.cpu(1)), weight1)
    updater(0, grad, weight)
    assert moved[-1][0].asnumpy().tolist() == [4]
    np.testing.assert_array_equal(weight1.asnumpy(), weight.asnumpy())


def test_counts_are_exact_beyond_float32():
    """The count is int64: float32 would have rounded 2**24 + 1 to 2**24."""
    start = 2 ** 24
    updater = mx.optimizer.get_updater(namsg.ARSG(begin_num_update=start))
    weight = mx.nd.ones((3,))
    updater(0, mx.nd.ones((3,)), weight)
    assert updater.states[0][-1][0].asnumpy().tolist() == [start + 1]
    resumed = mx.optimizer.get_updater(namsg.ARSG())
    resumed.set_states(updater.get_states())
    resumed(0, mx.nd.ones((3,)), weight)
    assert resumed.optimizer._index_update_count[0] == start + 2
    assert resumed.states[0][-1][0].asnumpy().tolist() == [start + 2]


# Lookahead's states end in a count, and so do those of an inner optimizer of the package.
ONE_WRITE = [('arsg', {}, False), ('arsg', {}, True), ('ranger', {}, None),
             ('lookahead', {'optimizer': 'arsg', 'k': 3}, False),
             ('lookahead', {'optimizer': 'sgd', 'momentum': 0.9, 'k': 3}, None)]


@pytest.mark.parametrize('name,kwargs,fused', ONE_WRITE,
                         ids=['arsg-ndarray', 'arsg-fused', 'ranger', 'lookahead-arsg-ndarray',
                              'lookahead-sgd'])
def test_counts_of_one_call_are_written_in_one_operation(monkeypatch, name, kwargs, fused):
    """The counts of the states an optimizer made are views into one buffer: an Updater call
    over many parameters writes them with one operation (per run of equal counts), whatever
    the number of parameters and the path, for Lookahead its own and its inner optimizer's
    together; loaded states, each its own array, take one split."""
    shapes = [(3, 2)] * 40
    updater = mx.optimizer.get_updater(_create(name, kwargs, fused))
    weights = [mx.nd.ones(s) for s in shapes]
    grads = [mx.nd.ones(s) for s in shapes]
    indices = list(range(len(shapes)))
    updater(indices, grads, weights)
    calls = []

    def counted(op, function):
        def call(*args, **kwargs):
            out = kwargs.get('out')
            if isinstance(out, (list, tuple)):
                out = out[0]
            if out is not None and out.dtype == np.int64:
                calls.append(op)
            return function(*args, **kwargs)
        return call
    for op in ('_slice_assign_scalar', '_full', '_set_value'):
        monkeypatch.setattr(mx.nd._internal, op, counted(op, getattr(mx.nd._internal, op)))
    monkeypatch.setattr(mx.nd, 'split', counted('split', mx.nd.split))
    updater(indices, grads, weights)
    assert calls == ['_slice_assign_scalar']
    assert all(updater.states[i][-1][0].asscalar() == 2 for i in indices)

    resumed = mx.optimizer.get_updater(_create(name, kwargs, fused))
    resumed.set_states(updater.get_states())
    resumed(indices, grads, weights)
    calls.clear()
    resumed(indices, grads, weights)
    assert calls == ['split']
    assert all(resumed.states[i][-1][0].asscalar() == 4 for i in indices)


# -- item 4: states loaded onto other parameters ---------------------------------------------

class _TwoLayers(gluon.HybridBlock):
    """Two dense layers named by ``names`` (their prefixes), the second of ``units`` outputs."""

    def __init__(self, names=('first_', 'second_'), units=3, in_units=4):
        super().__init__(prefix='')
        with self.name_scope():
            self.a = gluon.nn.Dense(4, in_units=in_units, prefix=names[0])
            self.b = gluon.nn.Dense(units, in_units=4, prefix=names[1])

    def hybrid_forward(self, F, x):
        return self.b(self.a(x))


# (contexts, kvstore, update_on_kvstore): an update on the kvstore runs in a callback whose
# exceptions MXNet only prints, so the check must run in load_states.
TRAINER_SETUPS = [([mx.cpu(0)], None, False), ([mx.cpu(0), mx.cpu(1)], 'device', False),
                  ([mx.cpu(0), mx.cpu(1)], 'device', True)]
TRAINER_IDS = ['no-kvstore', 'device', 'device-update-on-kvstore']


def _trained(net, name, kwargs, fused, ctxs, kvstore, update_on_kvstore, steps=2):
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    trainer = gluon.Trainer(net.collect_params(), name,
                            dict(kwargs, **({'fused': fused} if fused is not None else {})),
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    _steps(net, trainer, ctxs, steps)
    return trainer


def _steps(net, trainer, ctxs, steps):
    x = mx.nd.array(np.random.default_rng(0).normal(size=(4, 4)))
    for _ in range(steps):
        xs = gluon.utils.split_and_load(x, ctxs)
        with autograd.record():
            losses = [(net(xi) ** 2).sum() for xi in xs]
        autograd.backward(losses)
        trainer.step(4)


@pytest.mark.parametrize('setup', range(len(TRAINER_SETUPS)), ids=TRAINER_IDS)
@pytest.mark.parametrize('name,kwargs,fused', OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_trainer_refuses_states_of_another_shape_naming_both_parameters(tmp_path, name, kwargs,
                                                                         fused, setup):
    """States saved for a model whose second layer has 3 outputs, loaded into one with 5:
    MXNet hands the layer the other shape's states (an obscure error at the first step, or
    none at all on a kvstore, whose callback only prints it). load_states refuses them."""
    ctxs, kvstore, update_on_kvstore = TRAINER_SETUPS[setup]
    trainer = _trained(_TwoLayers(units=3), name, kwargs, fused, ctxs, kvstore, update_on_kvstore)
    trainer.save_states(str(tmp_path / 'states'))
    other = _trained(_TwoLayers(('first_', 'wider_'), units=5), name, kwargs, fused, ctxs,
                     kvstore, update_on_kvstore, steps=0)
    with pytest.raises(ValueError, match=r"the state saved for 'second_weight' has arrays of "
                                         r"shape \(3, 4\); parameter 'wider_weight' \(index \d\) "
                                         r"has shape \(5, 4\)") as error:
        other.load_states(str(tmp_path / 'states'))
    assert ("the state saved for 'second_bias' has arrays of shape (3,); parameter 'wider_bias'"
            in str(error.value))


@pytest.mark.parametrize('setup', range(len(TRAINER_SETUPS)), ids=TRAINER_IDS)
@pytest.mark.parametrize('name,kwargs,fused', OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_trainer_warns_of_states_loaded_onto_other_names(tmp_path, name, kwargs, fused, setup):
    """The same shapes under other names (blocks built in another order, a re-imported model):
    load_states warns, listing the pairs, and the states take the new names, so that saving
    and loading them again is quiet."""
    ctxs, kvstore, update_on_kvstore = TRAINER_SETUPS[setup]
    trainer = _trained(_TwoLayers(units=4), name, kwargs, fused, ctxs, kvstore, update_on_kvstore)
    trainer.save_states(str(tmp_path / 'states'))
    net = _TwoLayers(('in_', 'out_'), units=4)
    renamed = _trained(net, name, kwargs, fused, ctxs, kvstore, update_on_kvstore, steps=0)
    with pytest.warns(UserWarning, match='loaded onto parameters of other names') as caught:
        renamed.load_states(str(tmp_path / 'states'))
    # One warning for all, before any update (MXNet adds a ResourceWarning of its own).
    caught = [w for w in caught if w.category is namsg.StatesRenamedWarning]
    assert len(caught) == 1
    for pair in ("'first_weight' -> 'in_weight'", "'first_bias' -> 'in_bias'",
                 "'second_weight' -> 'out_weight'", "'second_bias' -> 'out_bias'"):
        assert pair in str(caught[0].message), str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter('error', namsg.StatesRenamedWarning)
        _steps(net, renamed, ctxs, 1)
        renamed.save_states(str(tmp_path / 'again'))
        renamed.load_states(str(tmp_path / 'again'))


def _module(names, units, fused, name, kwargs, ctx=mx.cpu()):
    data = mx.sym.Variable('data')
    hidden = mx.sym.FullyConnected(data, num_hidden=4, name=names[0])
    out = mx.sym.FullyConnected(hidden, num_hidden=units, name=names[1])
    mod = mx.mod.Module(mx.sym.MakeLoss(mx.sym.sum(mx.sym.square(out))), data_names=['data'],
                        label_names=None, context=ctx)
    mod.bind(data_shapes=[('data', (4, 4))])
    mod.init_params(mx.init.Xavier())
    mod.init_optimizer(optimizer=name, optimizer_params=dict(
        kwargs, **({'fused': fused} if fused is not None else {})))
    return mod


def _module_step(mod):
    mod.forward_backward(mx.io.DataBatch([mx.nd.ones((4, 4))], None))
    mod.update()


@pytest.mark.parametrize('name,kwargs,fused', OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_module_refuses_states_of_another_shape_naming_both_parameters(tmp_path, name, kwargs,
                                                                        fused):
    """Module.save_optimizer_states writes the states alone; loaded into a Module whose second
    layer is wider, the first update refuses them before touching a weight."""
    mod = _module(('fc1', 'fc2'), 3, fused, name, kwargs)
    _module_step(mod)
    mod.save_optimizer_states(str(tmp_path / 'states'))
    other = _module(('fc1', 'wide'), 5, fused, name, kwargs)
    other.load_optimizer_states(str(tmp_path / 'states'))
    before = {k: v.asnumpy() for k, v in other.get_params()[0].items()}
    with pytest.raises(ValueError, match=r"the state saved for 'fc2_weight' has arrays of shape "
                                         r"\(3, 4\); parameter 'wide_weight'"):
        _module_step(other)
        mx.nd.waitall()
    other._params_dirty = True
    for k, v in other.get_params()[0].items():
        np.testing.assert_array_equal(v.asnumpy(), before[k], err_msg=k)


@pytest.mark.parametrize('name,kwargs,fused', OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_module_warns_of_states_loaded_onto_other_names(tmp_path, name, kwargs, fused):
    mod = _module(('fc1', 'fc2'), 4, fused, name, kwargs)
    _module_step(mod)
    mod.save_optimizer_states(str(tmp_path / 'states'))
    renamed = _module(('dense_a', 'dense_b'), 4, fused, name, kwargs)
    renamed.load_optimizer_states(str(tmp_path / 'states'))
    with pytest.warns(UserWarning, match="'fc1_weight' -> 'dense_a_weight'") as caught:
        _module_step(renamed)
    assert all(w.category is namsg.StatesRenamedWarning for w in caught
               if 'other names' in str(w.message))
    renamed.save_optimizer_states(str(tmp_path / 'again'))
    renamed.load_optimizer_states(str(tmp_path / 'again'))
    with warnings.catch_warnings():
        warnings.simplefilter('error', namsg.StatesRenamedWarning)
        _module_step(renamed)


def test_states_of_other_tools_are_refused_clearly():
    """A tuple of two arrays at the end that is not (int64 count, uint8 name)."""
    opt = namsg.AMSGrad()
    updater = mx.optimizer.get_updater(opt)
    weight = mx.nd.ones((2, 2))
    updater.states[0] = (mx.nd.zeros((2, 2)), (mx.nd.zeros((2, 2)), mx.nd.zeros((2, 2))))
    updater.states_synced[0] = True
    with pytest.raises(ValueError, match='not made by namsg'):
        updater(0, mx.nd.ones((2, 2)), weight)


@pytest.mark.parametrize('name,kwargs,fused', OPTIMIZERS[:2] + OPTIMIZERS[5:6],
                         ids=OPTIMIZER_IDS[:2] + OPTIMIZER_IDS[5:6])
def test_a_model_built_again_in_the_same_process_resumes_quietly(tmp_path, name, kwargs, fused):
    """Gluon numbers automatic names per process: the same model built again has other numbers
    (dense0_ -> dense2_), in the same order. That is no reason to warn; the states take the new
    names."""
    def net():
        block = gluon.nn.HybridSequential()
        block.add(gluon.nn.Dense(4, in_units=4), gluon.nn.Dense(4, in_units=4))
        return block
    ctxs = [mx.cpu(0)]
    first = net()
    _trained(first, name, kwargs, fused, ctxs, None, False).save_states(str(tmp_path / 's'))
    again = net()
    assert [p.name for p in again.collect_params().values()] != \
        [p.name for p in first.collect_params().values()]
    trainer = _trained(again, name, kwargs, fused, ctxs, None, False, steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter('error', namsg.StatesRenamedWarning)
        trainer.load_states(str(tmp_path / 's'))
        _steps(again, trainer, ctxs, 1)
    names = [bytes(s[-1][1].asnumpy()).rstrip(b'\0').decode()
             for _, s in sorted(trainer._updaters[0].states.items())]
    assert names == [p.name for p in trainer._params]


@pytest.mark.parametrize('name,kwargs,fused', OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_module_warns_when_names_swap_places(tmp_path, name, kwargs, fused):
    """Two layers of one shape whose names swapped places: each would take the other's
    states, which no renumbering of automatic names explains."""
    mod = _module(('fc1', 'fc2'), 4, fused, name, kwargs)
    _module_step(mod)
    mod.save_optimizer_states(str(tmp_path / 'states'))
    swapped = _module(('fc2', 'fc1'), 4, fused, name, kwargs)
    swapped.load_optimizer_states(str(tmp_path / 'states'))
    with pytest.warns(UserWarning, match="'fc1_weight' -> 'fc2_weight'"):
        _module_step(swapped)


# -- states saved with the other multi_precision, or for a weight of another dtype -------------

def _elementwise_module(name, kwargs, fused, multi_precision, dtype='float16'):
    """A Module of ``dtype`` weights (element-wise operators, which MXNet runs in float16 on a
    CPU) whose optimizer has ``multi_precision``."""
    data = mx.sym.Variable('data', dtype=dtype)
    scale = mx.sym.Variable('scale', shape=(1, 4), dtype=dtype)
    shift = mx.sym.Variable('shift', shape=(1, 4), dtype=dtype)
    out = mx.sym.broadcast_add(mx.sym.broadcast_mul(data, scale), shift)
    mod = mx.mod.Module(mx.sym.MakeLoss(mx.sym.sum(mx.sym.square(out))), data_names=['data'],
                        label_names=None)
    mod.bind(data_shapes=[mx.io.DataDesc('data', (2, 4), dtype=dtype)])
    mod.init_params(arg_params={'scale': mx.nd.ones((1, 4), dtype=dtype),
                                'shift': mx.nd.zeros((1, 4), dtype=dtype)})
    mod.init_optimizer(optimizer=name, optimizer_params=dict(
        kwargs, multi_precision=multi_precision, learning_rate=0.01,
        **({'fused': fused} if fused is not None else {})))
    return mod


def _elementwise_step(mod):
    dtype = mod.data_shapes[0].dtype
    mod.forward_backward(mx.io.DataBatch([mx.nd.ones((2, 4), dtype=dtype)], None))
    mod.update()


def _refused_before_any_weight_changes(mod, message):
    """The first update of ``mod`` raises ValueError matching ``message``; no weight changed."""
    before = {k: v.asnumpy() for k, v in mod.get_params()[0].items()}
    with pytest.raises(ValueError, match=message):
        _elementwise_step(mod)
        mx.nd.waitall()
    mod._params_dirty = True
    for k, v in mod.get_params()[0].items():
        np.testing.assert_array_equal(v.asnumpy(), before[k], err_msg=k)


# MXNet's sgd warns of float16 weights without multi_precision, which half the cases have.
@pytest.mark.filterwarnings('ignore:Accumulating with float16 in optimizer:UserWarning')
@pytest.mark.parametrize('saved_with', [True, False], ids=['saved-with', 'saved-without'])
@pytest.mark.parametrize('name,kwargs,fused', OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_module_refuses_states_saved_with_the_other_multi_precision(tmp_path, name, kwargs,
                                                                    fused, saved_with):
    """Module.save_optimizer_states keeps no optimizer: a resumed run that sets multi_precision
    otherwise got the states of float16 weights with (or without) the float32 master copy in
    front. Before the fix its first update failed with a message about something else (a
    state of another preconditioner's layout, a shape, a TypeError) or, for Lookahead around
    MXNet's sgd, took the master copy for the slow weights without a word; MXNet's adam fails
    with an AssertionError or 'too many values to unpack'. Now the first update names the
    setting, before any weight changes."""
    mod = _elementwise_module(name, kwargs, fused, saved_with)
    _elementwise_step(mod)
    mod.save_optimizer_states(str(tmp_path / 'states'))
    resumed = _elementwise_module(name, kwargs, fused, not saved_with)
    resumed.load_optimizer_states(str(tmp_path / 'states'))
    _refused_before_any_weight_changes(
        resumed, r"^the optimizer state of parameter '(scale|shift)' \(index \d\) %s a float32 "
                 r"master copy of its weight, which %s\(multi_precision=%s\) %s for a float16 "
                 r"weight" % ('holds' if saved_with else 'lacks',
                              type(resumed._optimizer).__name__, not saved_with,
                              'does not keep' if saved_with else 'keeps'))


@pytest.mark.parametrize('saved,loaded', [('float32', 'float64'), ('float64', 'float32')])
@pytest.mark.parametrize('name,kwargs,fused', OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_module_refuses_states_saved_for_weights_of_another_dtype(tmp_path, name, kwargs, fused,
                                                                  saved, loaded):
    """The states of float32 weights loaded onto the model in float64, and back. Before the
    fix the fused path raised 'arsg_update: the state m of weight 0 is float32, not float64',
    which the docs call a bug of namsg, the NDArray path MXNet's 'Incompatible attr in node';
    Lookahead around MXNet's sgd went on with slow weights of the other precision."""
    mod = _elementwise_module(name, kwargs, fused, False, saved)
    _elementwise_step(mod)
    mod.save_optimizer_states(str(tmp_path / 'states'))
    resumed = _elementwise_module(name, kwargs, fused, False, loaded)
    resumed.load_optimizer_states(str(tmp_path / 'states'))
    _refused_before_any_weight_changes(
        resumed, r"^the optimizer state of parameter '(scale|shift)' \(index \d\) holds %s "
                 r"arrays, saved for a weight of another dtype: this weight is %s\. Load the "
                 r"states onto the model in the dtype it was saved in" % (saved, loaded))


class _Scale(gluon.HybridBlock):
    """y = x * scale + shift, element-wise (which MXNet runs in float16 on a CPU)."""

    def __init__(self):
        super().__init__(prefix='scaled_')
        with self.name_scope():
            self.scale = self.params.get('scale', shape=(4,), init=mx.init.One())
            self.shift = self.params.get('shift', shape=(4,), init=mx.init.Zero())

    def hybrid_forward(self, F, x, scale, shift):
        return F.broadcast_add(F.broadcast_mul(x, scale), shift)


@pytest.mark.parametrize('setup', range(len(TRAINER_SETUPS)), ids=TRAINER_IDS)
@pytest.mark.parametrize('name,kwargs,fused', OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_trainer_refuses_states_saved_for_weights_of_another_dtype(tmp_path, name, kwargs,
                                                                   fused, setup):
    """Trainer.load_states restores the optimizer with its multi_precision, but the model may
    have been cast since: states saved for float16 weights (with master copies) loaded onto
    the model in float32, and back; float32 and float64 likewise. Refused in load_states (on a
    kvstore the update runs in a callback whose exceptions MXNet only prints)."""
    ctxs, kvstore, update_on_kvstore = TRAINER_SETUPS[setup]
    for saved, loaded in (('float16', 'float32'), ('float32', 'float16'),
                          ('float32', 'float64'), ('float64', 'float32')):
        trainers = []
        for dtype in (saved, loaded):
            net = _Scale()
            net.initialize(ctx=ctxs)
            net.cast(dtype)
            trainers.append(gluon.Trainer(net.collect_params(), name, dict(
                kwargs, multi_precision=True, **({'fused': fused} if fused is not None else {})),
                kvstore=kvstore, update_on_kvstore=update_on_kvstore))
            if dtype == saved:
                x = mx.nd.ones((2, 4), dtype=dtype)
                with autograd.record():
                    losses = [net(xi).sum() for xi in gluon.utils.split_and_load(x, ctxs)]
                autograd.backward(losses)
                trainers[0].step(2)
                trainers[0].save_states(str(tmp_path / saved))
        if 'float16' in (saved, loaded):
            expected = (r"a float32 master copy of its weight, which \w+\(multi_precision=True\) "
                        r"%s for a %s weight" % ('does not keep' if saved == 'float16' else
                                                 'keeps', loaded))
            expected = ('holds ' if saved == 'float16' else 'lacks ') + expected
        else:
            expected = (r"holds %s arrays, saved for a weight of another dtype: this weight is "
                        r"%s\." % (saved, loaded))
        with pytest.raises(ValueError, match=r"^the optimizer state of parameter "
                                             r"'scaled_s\w+' \(index \d\) " + expected):
            trainers[1].load_states(str(tmp_path / saved))
