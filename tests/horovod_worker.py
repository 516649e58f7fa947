"""A rank of the Horovod tests (started by horovodrun from test_horovod; not a test module).

``python horovod_worker.py OUT ORDER``: ORDER is ``horovod-first`` (import horovod.mxnet, then
namsg; the kernel loads at the first update) or ``kernel-first`` (namsg's kernel loaded, then
horovod.mxnet imported). Every scenario trains the same parameters on this rank's gradients, with
an observation boost, a new learning rate and a new mu on the way, once straight through and once
stopped after RESUME_AT steps, saved by rank 0 and resumed on every rank from rank 0's files.
The results go to OUT/rank<r>.json.
"""

import json
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

hvd = None          # horovod.mxnet, imported by main() in the order asked for


def import_in_order(order):
    global hvd
    if order == 'horovod-first':
        import horovod.mxnet as hvd
        import namsg    # noqa: F401
    elif order == 'kernel-first':
        from namsg import kernels
        assert kernels.load(), kernels._state['error']
        import horovod.mxnet as hvd
    else:
        raise SystemExit('unknown order %r' % order)


SHAPES = [(7, 5), (3,), (33,)]
STEPS, RESUME_AT, BOOST_AT, NEW_LR_AT, NEW_MU_AT = 12, 6, 4, 7, 9
OPTIMIZER = dict(learning_rate=0.01, beta1=0.999, beta2=0.99, epsilon=1e-8, mu=0.1)
NEW_LR, NEW_MU = 0.004, 0.05
SCENARIOS = ['DistributedTrainer', "kvstore='horovod'", "kvstore=mx.kv.create('horovod')"]


def problem(rank):
    """The initial weights (rank 0's count: the others start elsewhere and must be overwritten
    by the broadcast) and this rank's gradients, one list per step."""
    rng = np.random.default_rng(0)
    weights = [rng.uniform(-0.5, 0.5, size=s) + rank for s in SHAPES]
    rng = np.random.default_rng(100 + rank)
    grads = [[rng.normal(size=s) for s in SHAPES] for _ in range(STEPS)]
    return weights, grads


def make_params(weights):
    params = gluon.ParameterDict()
    for i, w in enumerate(weights):
        p = params.get('w%d' % i, shape=w.shape)
        p.initialize(mx.init.Zero())
        p.set_data(mx.nd.array(w))
    return params


def make_trainer(scenario, params):
    if scenario == 'DistributedTrainer':
        hvd.broadcast_parameters(params, root_rank=0)
        return hvd.DistributedTrainer(params, 'arsg', dict(OPTIMIZER))
    store = 'horovod' if scenario == "kvstore='horovod'" else mx.kv.create('horovod')
    return gluon.Trainer(params, 'arsg', dict(OPTIMIZER), kvstore=store)


def run(grads, params, trainer, first, last, history):
    """Steps first..last (1-based) with the schedule of boost, new lr and new mu."""
    from namsg.boost import ObservationBoost
    boost = ObservationBoost(trainer, boost_epochs=[BOOST_AT])
    for k in range(first, last + 1):
        if k == BOOST_AT:
            history['boost'] = boost.epoch_begin(k)
        if k == NEW_LR_AT:
            trainer.set_learning_rate(NEW_LR)
        if k == NEW_MU_AT:
            trainer.optimizer.mu = NEW_MU
        with autograd.record():      # the gradient of sum(w * g) is g
            loss = mx.nd.add_n(*[(p.data() * mx.nd.array(g)).sum()
                                 for p, g in zip(params.values(), grads[k - 1])])
        loss.backward()
        trainer.step(1)
        history['lr'].append(trainer.optimizer.learning_rate)
        history['mu'].append(trainer.optimizer.mu)
    return [p.data().asnumpy().astype(np.float64).tolist() for p in params.values()]


def barrier():
    hvd.allreduce(mx.nd.zeros(1), name='barrier').wait_to_read()


def main(out, order):
    import_in_order(order)
    from namsg import kernels
    hvd.init()
    rank = hvd.rank()
    weights, grads = problem(rank)
    results = dict(rank=rank, size=hvd.size(), fused=kernels.use_fused(None))
    for n, scenario in enumerate(SCENARIOS):
        history = dict(lr=[], mu=[])
        params = make_params(weights)
        trainer = make_trainer(scenario, params)
        final = run(grads, params, trainer, 1, STEPS, history)

        # Stopped after RESUME_AT steps: rank 0 saves, every rank resumes from its files.
        resumed_history = dict(lr=[], mu=[])
        params = make_params(weights)
        trainer = make_trainer(scenario, params)
        run(grads, params, trainer, 1, RESUME_AT, resumed_history)
        saved = out / ('scenario%d' % n)
        if rank == 0:
            saved.mkdir()
            params.save(str(saved / 'params'))
            trainer.save_states(str(saved / 'trainer.states'))
        barrier()
        params = make_params(weights)
        params.load(str(saved / 'params'))
        trainer = make_trainer(scenario, params)
        trainer.load_states(str(saved / 'trainer.states'))
        resumed = run(grads, params, trainer, RESUME_AT + 1, STEPS, resumed_history)
        results[scenario] = dict(final=final, resumed=resumed, history=history,
                                 resumed_history=resumed_history)
    (out / ('rank%d.json' % rank)).write_text(json.dumps(results))
    barrier()


if __name__ == '__main__':
    main(Path(sys.argv[1]), sys.argv[2])
