"""A rank of the Horovod tests (started by horovodrun from test_horovod; not a test module).

``python horovod_worker.py OUT ORDER``: ORDER is ``horovod-first`` (import horovod.mxnet, then
namsg; the kernel loads at the first update) or ``kernel-first`` (namsg's kernel loaded, then
horovod.mxnet imported). Every scenario trains the same parameters on this rank's gradients, with
an observation boost, a new learning rate and a new mu on the way, once straight through and once
stopped after RESUME_AT steps, saved by rank 0 and resumed on every rank from rank 0's files.
The results go to OUT/rank<r>.json.
"""

import faulthandler
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
SCENARIOS = ['DistributedTrainer', "kvstore='horovod'", "kvstore=mx.kv.create('horovod')",
             "Module kvstore='horovod'", "Module kvstore=mx.kv.create('horovod')"]


def problem(rank):
    """The initial weights (rank 0's count: the others start elsewhere and must be overwritten
    by the broadcast) and this rank's gradients, one list per step."""
    rng = np.random.default_rng(0)
    weights = [rng.uniform(-0.5, 0.5, size=s) + rank for s in SHAPES]
    rng = np.random.default_rng(100 + rank)
    grads = [[rng.normal(size=s) for s in SHAPES] for _ in range(STEPS)]
    return weights, grads


class GluonRun:
    """The parameters and a Trainer of ``scenario``, from ``weights``."""

    def __init__(self, scenario, weights):
        self.params = gluon.ParameterDict()
        for i, w in enumerate(weights):
            p = self.params.get('w%d' % i, shape=w.shape)
            p.initialize(mx.init.Zero())
            p.set_data(mx.nd.array(w))
        if scenario == 'DistributedTrainer':
            hvd.broadcast_parameters(self.params, root_rank=0)
            self.trainer = hvd.DistributedTrainer(self.params, 'arsg', dict(OPTIMIZER))
        else:
            store = 'horovod' if scenario == "kvstore='horovod'" else mx.kv.create('horovod')
            self.trainer = gluon.Trainer(self.params, 'arsg', dict(OPTIMIZER), kvstore=store)
        self.boost_target = self.trainer

    @property
    def optimizer(self):
        return self.trainer.optimizer

    def step(self, grads):
        with autograd.record():      # the gradient of sum(w * g) is g
            loss = mx.nd.add_n(*[(p.data() * mx.nd.array(g)).sum()
                                 for p, g in zip(self.params.values(), grads)])
        loss.backward()
        self.trainer.step(1)

    def weights(self):
        return [p.data().asnumpy().astype(np.float64).tolist() for p in self.params.values()]

    def save(self, directory):
        self.params.save(str(directory / 'params'))
        self.trainer.save_states(str(directory / 'trainer.states'))

    def load(self, directory):
        self.params.load(str(directory / 'params'))
        self.trainer.load_states(str(directory / 'trainer.states'))


class ModuleRun:
    """A Module whose loss sum(w * g) takes the gradients as data (a batch of one, so
    rescale_grad is 1), from ``weights``, with the store of ``scenario``."""

    def __init__(self, scenario, weights):
        self.names = ['w%d' % i for i in range(len(weights))]
        terms = [mx.sym.sum(mx.sym.broadcast_mul(mx.sym.expand_dims(
            mx.sym.Variable(n, shape=w.shape), axis=0), mx.sym.Variable('g' + n[1:])))
            for n, w in zip(self.names, weights)]
        self.module = mx.mod.Module(mx.sym.MakeLoss(mx.sym.add_n(*terms)),
                                    data_names=['g' + n[1:] for n in self.names],
                                    label_names=None, context=mx.cpu())
        self.module.bind(data_shapes=[('g' + n[1:], (1,) + w.shape)
                                      for n, w in zip(self.names, weights)])
        self.module.init_params(arg_params={n: mx.nd.array(w)
                                            for n, w in zip(self.names, weights)})
        self.store = 'horovod' if scenario == "Module kvstore='horovod'" else \
            mx.kv.create('horovod')
        self.module.init_optimizer(kvstore=self.store, optimizer='arsg',
                                   optimizer_params=dict(OPTIMIZER))
        self.boost_target = self.optimizer

    @property
    def optimizer(self):
        return self.module._optimizer       # Module has no public accessor

    def step(self, grads):
        self.module.forward_backward(mx.io.DataBatch(
            data=[mx.nd.array(g[None]) for g in grads], label=None))
        self.module.update()

    def weights(self):
        arg_params, _ = self.module.get_params()
        return [arg_params[n].asnumpy().astype(np.float64).tolist() for n in self.names]

    def save(self, directory):
        mx.nd.save(str(directory / 'params'), self.module.get_params()[0])
        self.module.save_optimizer_states(str(directory / 'optimizer.states'))
        # Module saves no optimizer: its user keeps the settings of the time, here lr and mu.
        (directory / 'settings.json').write_text(json.dumps(
            dict(lr=self.optimizer.lr, mu=self.optimizer.mu)))

    def load(self, directory):
        self.module.set_params(mx.nd.load(str(directory / 'params')), {})
        self.module.load_optimizer_states(str(directory / 'optimizer.states'))
        settings = json.loads((directory / 'settings.json').read_text())
        self.optimizer.set_learning_rate(settings['lr'])
        self.optimizer.mu = settings['mu']


def make_run(scenario, weights):
    return (ModuleRun if scenario.startswith('Module') else GluonRun)(scenario, weights)


def run(grads, job, first, last, history):
    """Steps first..last (1-based) with the schedule of boost, new lr and new mu."""
    from namsg.boost import ObservationBoost
    boost = ObservationBoost(job.boost_target, boost_epochs=[BOOST_AT])
    for k in range(first, last + 1):
        if k == BOOST_AT:
            history['boost'] = boost.epoch_begin(k)
        if k == NEW_LR_AT:
            job.optimizer.set_learning_rate(NEW_LR)
        if k == NEW_MU_AT:
            job.optimizer.mu = NEW_MU
        job.step(grads[k - 1])
        history['lr'].append(job.optimizer.learning_rate)
        history['mu'].append(job.optimizer.mu)
    return job.weights()


def barrier():
    hvd.allreduce(mx.nd.zeros(1), name='barrier').wait_to_read()


def main(out, order):
    import_in_order(order)
    # After MXNet's own handler, which prints no Python stack: a rank that crashes in native
    # code (a CI run under load saw a segfault once) then shows where each thread of it was.
    faulthandler.enable()
    from namsg import kernels
    hvd.init()
    rank = hvd.rank()
    weights, grads = problem(rank)
    results = dict(rank=rank, size=hvd.size(), fused=kernels.use_fused(None))
    for n, scenario in enumerate(SCENARIOS):
        history = dict(lr=[], mu=[])
        final = run(grads, make_run(scenario, weights), 1, STEPS, history)

        # Stopped after RESUME_AT steps: rank 0 saves, every rank resumes from its files.
        resumed_history = dict(lr=[], mu=[])
        job = make_run(scenario, weights)
        run(grads, job, 1, RESUME_AT, resumed_history)
        saved = out / ('scenario%d' % n)
        if rank == 0:
            saved.mkdir()
            job.save(saved)
        barrier()
        job = make_run(scenario, weights)
        job.load(saved)
        resumed = run(grads, job, RESUME_AT + 1, STEPS, resumed_history)
        results[scenario] = dict(final=final, resumed=resumed, history=history,
                                 resumed_history=resumed_history)
    (out / ('rank%d.json' % rank)).write_text(json.dumps(results))
    barrier()


if __name__ == '__main__':
    main(Path(sys.argv[1]), sys.argv[2])
