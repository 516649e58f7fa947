"""The observation-boost policy: arithmetic, triggers, schedulers, checkpoints."""

import json

import mxnet as mx
import pytest
from mxnet import gluon

import namsg
from namsg import dynamics
from namsg.boost import ObservationBoost, ScaledScheduler


def test_boost_doubles_mu_and_scales_lr_by_tau_star_ratio():
    opt = namsg.ARSG(learning_rate=0.1, mu=0.05)
    record = ObservationBoost(opt).boost(epoch=6)
    assert opt.mu == 0.1
    factor = dynamics.tau_star(0.999, 0.1) / dynamics.tau_star(0.999, 0.05)
    assert opt.learning_rate == pytest.approx(0.1 * factor)
    assert 0.24 < factor < 0.26
    assert record == dict(epoch=6, trigger='manual', old_mu=0.05, new_mu=0.1, old_lr=0.1,
                          new_lr=pytest.approx(0.1 * factor), factor=factor)


@pytest.mark.parametrize('optimizer', [namsg.RSG(learning_rate=1.0, beta=0.99, mu=0.05),
                                       namsg.ARSG(preconditioner='adam', beta1=0.9, mu=0.05,
                                                  learning_rate=1.0)])
def test_boost_uses_the_optimizers_own_beta(optimizer):
    ObservationBoost(optimizer).boost(epoch=1)
    assert optimizer.learning_rate == pytest.approx(dynamics.boost_factor(optimizer.beta1, 0.05))


def test_fixed_factor_overrides_the_analysis():
    opt = namsg.ARSG(learning_rate=0.2, mu=0.05)
    ObservationBoost(opt, factor=0.25).boost(epoch=1)
    assert opt.learning_rate == pytest.approx(0.05)


def test_boost_at_given_epoch_happens_once():
    opt = namsg.ARSG(learning_rate=0.1, mu=0.05)
    policy = ObservationBoost(opt, boost_epochs=[6])
    done = [policy.epoch_begin(e) for e in range(1, 11)]
    assert [r['epoch'] for r in done if r] == [6]
    assert policy.epoch_begin(6) is None and opt.mu == 0.1


def test_mu_that_cannot_double_is_refused():
    with pytest.raises(ValueError, match='mu'):
        ObservationBoost(namsg.ARSG(mu=0.6)).boost(epoch=1)


@pytest.mark.parametrize('kwargs,name', [(dict(window=0), 'window'),
                                         (dict(threshold=0), 'threshold'),
                                         (dict(boost_epochs=[0]), 'boost_epochs'),
                                         (dict(factor=-1), 'factor')])
def test_invalid_policy_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ObservationBoost(namsg.ARSG(), **kwargs)


def _run(policy, losses):
    boosted = []
    for epoch, loss in enumerate(losses, start=1):
        if policy.epoch_begin(epoch):
            boosted.append(epoch)
        policy.epoch_end(epoch, loss)
    return boosted


def test_auto_trigger_fires_when_the_loss_flattens():
    # Epochs 1-6 fall by 30% each, then by 1%: the window of 3 steps holds only 1% steps at the
    # end of epoch 9 (epochs 6 -> 9), so the boost applies from epoch 10.
    losses = [0.7 ** e for e in range(6)] + [0.7 ** 5 * 0.99 ** e for e in range(1, 10)]
    policy = ObservationBoost(namsg.ARSG(mu=0.05), auto=True, window=3, threshold=0.02)
    assert _run(policy, losses) == [10]
    assert policy.boosts[0]['trigger'] == 'flat loss'


def test_auto_trigger_stays_quiet_while_the_loss_falls_and_respects_max_boosts():
    falling = [0.8 ** e for e in range(20)]
    assert _run(ObservationBoost(namsg.ARSG(mu=0.05), auto=True), falling) == []
    flat = [1.0] * 20
    policy = ObservationBoost(namsg.ARSG(mu=0.05), auto=True, window=2, max_boosts=2)
    # A new window must fill after each boost before the next one.
    assert _run(policy, flat) == [4, 7]
    assert policy.optimizer.mu == pytest.approx(0.2)


def test_boost_composes_with_an_lr_scheduler():
    """CIFAR-10: boost at an epoch, then the scheduler's drop by 10 still applies."""
    scheduler = mx.lr_scheduler.FactorScheduler(step=100, factor=0.1, base_lr=0.05)
    opt = namsg.ARSG(learning_rate=0.05, mu=0.05, lr_scheduler=scheduler)
    policy = ObservationBoost(opt, factor=0.25)
    opt.num_update = 50
    policy.boost(epoch=2)
    assert isinstance(opt.lr_scheduler, ScaledScheduler)
    assert opt.learning_rate == pytest.approx(0.0125)
    opt.num_update = 150
    assert opt.learning_rate == pytest.approx(0.00125)
    ObservationBoost(opt, factor=0.5).boost(epoch=3)   # a second boost scales the same wrapper
    assert opt.learning_rate == pytest.approx(0.000625)
    assert opt.lr_scheduler.inner is scheduler


def _trainer():
    net = gluon.nn.Dense(1, in_units=2)
    net.initialize(mx.init.Constant(0.5))
    return net, gluon.Trainer(net.collect_params(), 'arsg', dict(learning_rate=0.1, mu=0.05))


def test_state_round_trip_with_trainer_checkpoint_boosts_exactly_once(tmp_path):
    net, trainer = _trainer()
    x = mx.nd.ones((4, 2))
    policy = ObservationBoost(trainer, boost_epochs=[3])
    for epoch in range(1, 5):
        policy.epoch_begin(epoch)
        with mx.autograd.record():
            loss = net(x).sum()
        loss.backward()
        trainer.step(4)
        policy.epoch_end(epoch, float(loss.asscalar()))
    trainer.save_states(str(tmp_path / 'trainer.states'))
    (tmp_path / 'policy.json').write_text(json.dumps(policy.state_dict()))

    net, resumed = _trainer()
    resumed.load_states(str(tmp_path / 'trainer.states'))
    restored = ObservationBoost(resumed, boost_epochs=[3])
    restored.load_state_dict(json.loads((tmp_path / 'policy.json').read_text()))
    assert restored.optimizer is resumed.optimizer    # followed through load_states
    assert resumed.optimizer.mu == 0.1
    assert [restored.epoch_begin(e) for e in range(3, 8)] == [None] * 5
    assert resumed.optimizer.mu == 0.1
    assert resumed.learning_rate == pytest.approx(0.1 * dynamics.boost_factor(0.999, 0.05))
    assert restored.boosts == policy.boosts and restored.losses == policy.losses


@pytest.mark.parametrize('optimizer,params,policy,problem', [
    ('arsg', dict(mu=0.6), dict(boost_epochs=[2]), r'mu=0\.6 .*\(0, 0\.5\)'),
    ('arsg', dict(mu=0.0), dict(boost_epochs=[2]), r'mu=0\.0: doubling it changes nothing'),
    ('rsg', dict(mu=0.3), dict(auto=True, max_boosts=2), r'mu=0\.3 2 time.*\(0, 0\.25\)'),
    ('rsg', dict(mu=0.3, beta=0.0), dict(boost_epochs=[2]), 'beta1=0.0.*factor='),
    ('adam', {}, dict(boost_epochs=[2]), r'Adam: it has no mu\. .*ARSG'),
    ('ranger', {}, dict(auto=True), 'Ranger: it has no mu'),
])
def test_a_trainer_the_policy_cannot_boost_is_refused_at_construction(optimizer, params, policy,
                                                                       problem):
    """The trial: ObservationBoost(trainer, boost_epochs=[2]) took these and failed only at the
    boost epoch, hours into training (ValueError, or AttributeError 'Adam' has no 'mu')."""
    net = gluon.nn.Dense(1)
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), optimizer, params)
    with pytest.raises(ValueError, match=problem):
        ObservationBoost(trainer, **policy)


def test_a_boostable_optimizer_with_no_boost_due_is_accepted_whatever_its_mu():
    assert ObservationBoost(namsg.ARSG(mu=0.6)).boosts == []
    assert ObservationBoost(namsg.ARSG(mu=0.3), auto=True, max_boosts=1).boosts == []


@pytest.mark.parametrize('kwargs,problem', [
    (dict(optimizer='adam'), "create optimizer='adam'.*optimizer_params"),
    (dict(optimizer='no-such-optimizer', optimizer_params={}), 'no-such-optimizer'),
    (dict(optimizer_params={'mu': 1.5}), 'mu=1.5'),
    (dict(loss_fn='l2'), 'loss_fn'),
])
def test_step_size_search_refuses_bad_arguments_before_reading_a_batch(kwargs, problem):
    from namsg.boost import search_step_size

    def batches():
        raise AssertionError('a batch was read before the arguments were checked')
        yield  # pragma: no cover

    net = gluon.nn.Dense(1)
    net.initialize()
    with pytest.raises(ValueError, match=problem):
        search_step_size(net, batches(), **dict(dict(loss_fn=gluon.loss.L2Loss(), iterations=2),
                                                **kwargs))


def test_a_mu_of_zero_is_refused_with_advice_that_fits_it():
    """mu = 0 was told to 'start from a smaller mu'."""
    opt = mx.optimizer.create('arsg', mu=0.0)
    with pytest.raises(ValueError, match=r'cannot boost mu=0.0: doubling it changes nothing; '
                                         r'start from a small positive mu'):
        ObservationBoost(opt, boost_epochs=[2])


# -- resuming: the boosts done travel with the optimizer -----------------------------------------

# (optimizer, its arguments) for the resume tests: ARSG, RSG, and ARSG inside Lookahead (whose
# mu and record live in the inner optimizer).
BOOSTED = {'arsg': ('arsg', dict(learning_rate=0.1, mu=0.05)),
           'rsg': ('rsg', dict(learning_rate=0.1, beta=0.9, mu=0.05)),
           'lookahead_arsg': ('lookahead', dict(optimizer='arsg', learning_rate=0.1, mu=0.05))}
# Two triggers a resumed run meets again: the loss still flat (auto; the review saw mu 0.1 ->
# 0.2 and the step size divided by 4 again at epoch 16), and a boost epoch met again by a run
# resumed from a checkpoint written within that epoch.
TRIGGERS = {'auto': (dict(auto=True, window=2), 4, 6),      # boosts at 4, saved after 5
            'epoch': (dict(boost_epochs=[2]), 2, 2)}        # boosts at 2, saved within 2
SETUPS = {'updates_in_trainer': ([mx.cpu(0)], None, False),
          'update_on_kvstore': ([mx.cpu(0), mx.cpu(1)], 'device', True)}


def _boosted_trainer(name, fused, setup):
    optimizer, kwargs = BOOSTED[name]
    contexts, kvstore, update_on_kvstore = SETUPS[setup]
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize(mx.init.Constant(0.5), ctx=contexts)
    kwargs = dict(kwargs, fused=fused)
    trainer = gluon.Trainer(net.collect_params(), optimizer, kwargs, kvstore=kvstore,
                            update_on_kvstore=update_on_kvstore)
    return net, trainer, contexts


def _step(net, trainer, contexts):
    with mx.autograd.record():
        losses = [net(mx.nd.ones((2, 3), ctx=c)).sum() for c in contexts]
    mx.autograd.backward(losses)
    trainer.step(2 * len(contexts))


def _train_epochs(policy, net, trainer, contexts, epochs, end=True):
    """Epochs of one step each, with a flat mean training loss; returns the boosts made."""
    boosted = []
    for epoch in epochs:
        record = policy.epoch_begin(epoch)
        if record:
            boosted.append(epoch)
        _step(net, trainer, contexts)
        if end or epoch != epochs[-1]:
            policy.epoch_end(epoch, 1.0)
    return boosted


@pytest.mark.parametrize('trigger', list(TRIGGERS))
@pytest.mark.parametrize('setup', list(SETUPS))
@pytest.mark.parametrize('fused', [False, True], ids=['ndarray', 'fused'])
@pytest.mark.parametrize('name', list(BOOSTED))
def test_a_run_resumed_with_a_new_policy_is_not_boosted_again(tmp_path, name, fused, setup,
                                                              trigger):
    """Trainer.save_states / load_states and a new ObservationBoost, no load_state_dict: the
    boost done before the checkpoint came back with the optimizer's mu and step size, and is
    not made again. Fails on 76c0ac0 (the policy kept its boosts to itself: mu 0.05 -> 0.1 ->
    0.2)."""
    kwargs, boost_epoch, saved_after = TRIGGERS[trigger]
    net, trainer, contexts = _boosted_trainer(name, fused, setup)
    policy = ObservationBoost(trainer, **kwargs)
    # The checkpoint of the 'epoch' trigger is written within its last epoch (no epoch_end).
    first = _train_epochs(policy, net, trainer, contexts, list(range(1, saved_after + 1)),
                          end=trigger == 'auto')
    assert first == [boost_epoch]
    boosted_lr = trainer.learning_rate
    trainer.save_states(str(tmp_path / 'trainer.states'))
    net.save_parameters(str(tmp_path / 'net.params'))

    net, resumed, contexts = _boosted_trainer(name, fused, setup)
    net.load_parameters(str(tmp_path / 'net.params'), ctx=contexts)
    restarted = ObservationBoost(resumed, **kwargs)      # made before load_states, as train.py
    resumed.load_states(str(tmp_path / 'trainer.states'))
    assert restarted.boosts == policy.boosts
    resume_at = saved_after + (trigger == 'auto')
    assert _train_epochs(restarted, net, resumed, contexts,
                         list(range(resume_at, resume_at + 8))) == []
    assert resumed.optimizer.mu == pytest.approx(0.1)
    assert resumed.learning_rate == pytest.approx(boosted_lr)
    # A policy made after load_states counts them too.
    assert ObservationBoost(resumed, **kwargs).epoch_begin(resume_at + 8) is None


@pytest.mark.parametrize('fused', [False, True], ids=['ndarray', 'fused'])
@pytest.mark.parametrize('name', list(BOOSTED))
def test_a_pickled_optimizer_carries_its_boosts(name, fused):
    """pickle (as MXNet's Updater.get_states(dump_optimizer=True) and a kvstore's
    set_optimizer do) keeps the record: a new policy on the copy boosts no more than max_boosts
    in all. Fails on 76c0ac0."""
    import pickle
    optimizer, kwargs = BOOSTED[name]
    opt = mx.optimizer.create(optimizer, **dict(kwargs, fused=fused))
    ObservationBoost(opt, boost_epochs=[3]).epoch_begin(3)
    copy = pickle.loads(pickle.dumps(opt))
    assert copy.mu == pytest.approx(0.1)
    policy = ObservationBoost(copy, auto=True, window=1)
    assert [b['epoch'] for b in policy.boosts] == [3]
    assert _run(policy, [1.0] * 10) == []
    assert copy.mu == pytest.approx(0.1)
    # max_boosts=2 allows one more, when a window of flat epochs from epoch 3 on has passed,
    # recorded after the first.
    policy = ObservationBoost(copy, auto=True, window=1, max_boosts=2)
    assert _run(policy, [1.0] * 10) == [5]
    assert [b['epoch'] for b in pickle.loads(pickle.dumps(copy)).obsb_boosts] == [3, 5]


def test_a_resumed_optimizer_boosted_past_the_policy_s_range_is_accepted():
    """mu 0.3 boosted once is 0.6: a new policy with the run's boost_epochs has no boost left to
    make and accepts it (on 76c0ac0: ValueError 'cannot boost mu=0.6 1 time(s)' when resuming
    with the command that started the run)."""
    import pickle
    opt = namsg.ARSG(learning_rate=0.1, mu=0.3)
    ObservationBoost(opt, boost_epochs=[2]).epoch_begin(2)
    resumed = pickle.loads(pickle.dumps(opt))
    assert ObservationBoost(resumed, boost_epochs=[2]).epoch_begin(2) is None
    with pytest.raises(ValueError, match=r'mu=0\.6 1 time'):
        ObservationBoost(resumed, boost_epochs=[2, 5], max_boosts=2)


def _old_checkpoint(tmp_path):
    """Trainer states and policy state as namsg wrote them before the record existed: the
    optimizer boosted at epoch 2 (mu 0.1) without obsb_boosts, the boosts in the policy state."""
    net, trainer, contexts = _boosted_trainer('arsg', False, 'updates_in_trainer')
    policy = ObservationBoost(trainer, boost_epochs=[2])
    _train_epochs(policy, net, trainer, contexts, [1, 2, 3])
    state = json.loads(json.dumps(policy.state_dict()))
    trainer.optimizer.__dict__.pop('obsb_boosts', None)
    trainer.save_states(str(tmp_path / 'trainer.states'))
    return state


@pytest.mark.parametrize('order', ['load_states first', 'load_state_dict first'])
def test_checkpoints_without_the_record_resume_as_before_with_load_state_dict(tmp_path, order):
    state = _old_checkpoint(tmp_path)
    net, trainer, contexts = _boosted_trainer('arsg', False, 'updates_in_trainer')
    policy = ObservationBoost(trainer, boost_epochs=[2], auto=True, window=1)
    if order == 'load_states first':
        trainer.load_states(str(tmp_path / 'trainer.states'))
        policy.load_state_dict(state)
    else:
        policy.load_state_dict(state)
        trainer.load_states(str(tmp_path / 'trainer.states'))
    assert [b['epoch'] for b in policy.boosts] == [2] and policy.losses == [(1, 1.0), (2, 1.0),
                                                                             (3, 1.0)]
    assert _train_epochs(policy, net, trainer, contexts, list(range(2, 9))) == []
    assert trainer.optimizer.mu == pytest.approx(0.1)
    if order == 'load_states first':
        # The next checkpoint carries the record: resumed without load_state_dict, no boost.
        trainer.save_states(str(tmp_path / 'next.states'))
        net, again, contexts = _boosted_trainer('arsg', False, 'updates_in_trainer')
        again.load_states(str(tmp_path / 'next.states'))
        assert _run(ObservationBoost(again, auto=True, window=1), [1.0] * 6) == []


def test_a_policy_state_from_another_point_of_the_run_is_refused(tmp_path):
    """Trainer states saved after the boost with a policy state saved before it would have
    boosted a second time (76c0ac0 took the policy state's word for it)."""
    net, trainer, contexts = _boosted_trainer('arsg', False, 'updates_in_trainer')
    policy = ObservationBoost(trainer, boost_epochs=[2])
    _train_epochs(policy, net, trainer, contexts, [1])
    before = policy.state_dict()
    _train_epochs(policy, net, trainer, contexts, [2])
    trainer.save_states(str(tmp_path / 'trainer.states'))

    net, resumed, _ = _boosted_trainer('arsg', False, 'updates_in_trainer')
    resumed.load_states(str(tmp_path / 'trainer.states'))
    restarted = ObservationBoost(resumed, boost_epochs=[2])
    with pytest.raises(ValueError, match=r'policy state records boosts at epochs \[\] but the '
                                         r'optimizer carries boosts at epochs \[2\]'):
        restarted.load_state_dict(before)
    assert restarted.losses == [] and [b['epoch'] for b in restarted.boosts] == [2]


def _module(fused, params=None, load=None):
    """A Module of one FullyConnected layer from fixed weights (or ``load``: (prefix, epoch) of
    a checkpoint with optimizer states), its ARSG optimizer made with ``params``."""
    if load is None:
        out = mx.sym.LinearRegressionOutput(mx.sym.FullyConnected(
            mx.sym.Variable('data'), num_hidden=2, name='fc'), name='lro')
        mod = mx.mod.Module(out, context=mx.cpu(), label_names=['lro_label'])
    else:
        mod = mx.mod.Module.load(*load, load_optimizer_states=True, context=mx.cpu(),
                                 label_names=['lro_label'])
    mod.bind([('data', (4, 3))], [('lro_label', (4, 2))])
    if load is None:
        mod.init_params(arg_params={'fc_weight': mx.nd.full((2, 3), 0.5),
                                    'fc_bias': mx.nd.zeros((2,))})
    mod.init_optimizer(kvstore=None, optimizer='arsg', optimizer_params=dict(
        params or dict(learning_rate=0.1, mu=0.05), fused=fused, rescale_grad=0.25))
    return mod


def _module_epochs(policy, mod, epochs):
    boosted = []
    for epoch in epochs:
        if policy.epoch_begin(epoch):
            boosted.append(epoch)
        mod.forward_backward(mx.io.DataBatch([mx.nd.ones((4, 3)) * epoch], [mx.nd.ones((4, 2))]))
        mod.update()
        policy.epoch_end(epoch, 1.0)
    return boosted


@pytest.mark.parametrize('fused', [False, True], ids=['ndarray', 'fused'])
def test_a_module_resumed_with_the_boosted_settings_and_the_policy_state_ends_as_uninterrupted(
        tmp_path, fused):
    """Module checkpoints hold the states without the optimizer (MXNet's
    Module.save_optimizer_states), so neither the boosted mu and step size nor the record:
    given the last record's new_mu and new_lr, and the policy's state (docs/guide/resuming.md),
    the resumed Module is not boosted again and ends where the uninterrupted one does."""
    mod = _module(fused)
    assert _module_epochs(ObservationBoost(mod._optimizer, boost_epochs=[2]), mod,
                          [1, 2, 3, 4]) == [2]
    uninterrupted = mod.get_params()[0]['fc_weight'].asnumpy()

    mod = _module(fused)
    policy = ObservationBoost(mod._optimizer, boost_epochs=[2])
    _module_epochs(policy, mod, [1, 2])
    mod.save_checkpoint(str(tmp_path / 'model'), 2, save_optimizer_states=True)
    state = json.loads(json.dumps(policy.state_dict()))

    last = state['boosts'][-1]
    mod = _module(fused, dict(learning_rate=last['new_lr'], mu=last['new_mu']),
                  load=(str(tmp_path / 'model'), 2))
    assert getattr(mod._optimizer, 'obsb_boosts', None) is None
    policy = ObservationBoost(mod._optimizer, boost_epochs=[2])
    policy.load_state_dict(state)
    assert _module_epochs(policy, mod, [3, 4]) == []
    assert (mod.get_params()[0]['fc_weight'].asnumpy() == uninterrupted).all()
