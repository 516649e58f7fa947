"""A worker of the distributed tests (started by namsg_dist.launch_local; not a test module).

Least squares on a fixed shard per rank; Dense(3) from fixed weights; the optimizer and the
kvstore come from the environment; the final weights go to $OUT/rank<r>.npz, the mean losses of
the last steps to the same file. Optional environment:

* CHANGES: JSON list of [step, kind, value], applied after that many steps: kind 'boost'
  (ObservationBoost with factor value), 'lr' (Trainer.set_learning_rate) or another attribute
  of the optimizer (trainer.optimizer.mu = value, .wd = value, ...). The worker's optimizer's
  lr and mu after each step are saved.
* MULTIPLIERS: JSON {"weight"|"bias": {"lr_mult": x, "wd_mult": y}}.
* FAIL_RANK, FAIL_AFTER: that rank raises after that many steps.
* API=module: the same model as a Module (:func:`module_run`), only the final weights saved.

:func:`local_run` trains the same model in one process on every rank's data (the reference).
"""

import json
import os

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import namsg
from namsg.boost import ObservationBoost

IN, OUT_UNITS, BATCH = 5, 3, 8


def shard(rank, steps):
    rng = np.random.default_rng(100 + rank)
    x = rng.normal(size=(steps * BATCH, IN))
    truth = np.random.default_rng(7).normal(size=(IN, OUT_UNITS))
    return x, x @ truth


def initial_weights():
    rng = np.random.default_rng(0)
    return rng.normal(size=(OUT_UNITS, IN)) * 0.1, rng.normal(size=(OUT_UNITS,)) * 0.1


def build(contexts, optimizer, params, multipliers=None, **trainer_kwargs):
    """The model at its fixed initial weights, with ``multipliers``, and its Trainer."""
    net = gluon.nn.Dense(OUT_UNITS, in_units=IN)
    net.initialize(ctx=contexts)
    w0, b0 = initial_weights()
    net.weight.set_data(mx.nd.array(w0))
    net.bias.set_data(mx.nd.array(b0))
    for name, mults in (multipliers or {}).items():
        for attr, value in mults.items():
            setattr(getattr(net, name), attr, value)
    return net, gluon.Trainer(net.collect_params(), optimizer, params, **trainer_kwargs)


def apply_change(trainer, kind, value, epoch):
    if kind == 'boost':
        ObservationBoost(trainer, factor=value).boost(epoch)
    elif kind == 'lr':
        trainer.set_learning_rate(value)
    else:
        setattr(trainer.optimizer, kind, value)


def train(net, trainer, contexts, batches, changes=(), fail_after=None):
    """Steps over ``batches`` ((x, y) NumPy pairs); returns the losses and the optimizer's lr
    and mu after each step."""
    loss_fn = gluon.loss.L2Loss()
    losses, lrs, mus = [], [], []
    for k, (x, y) in enumerate(batches):
        xs = gluon.utils.split_and_load(mx.nd.array(x), contexts)
        ys = gluon.utils.split_and_load(mx.nd.array(y), contexts)
        with autograd.record():
            loss = [loss_fn(net(xi), yi) for xi, yi in zip(xs, ys)]
        autograd.backward(loss)
        trainer.step(BATCH)
        losses.append(np.mean([l.mean().asscalar() for l in loss]))
        if fail_after == k + 1:
            raise RuntimeError('this worker fails after %d steps, as the test asked' % (k + 1))
        for step, kind, value in changes:
            if step == k + 1:
                apply_change(trainer, kind, value, k + 1)
        lrs.append(trainer.optimizer.learning_rate)
        mus.append(getattr(trainer.optimizer, 'mu', np.nan))
    return losses, lrs, mus


def local_run(optimizer, params, steps, workers, changes=(), multipliers=None):
    """One process, no kvstore, every rank's rows in each batch (the gradient a dist_sync job
    sums), the same ``changes``: returns the final (weight, bias) as NumPy arrays."""
    contexts = [mx.cpu()]
    net, trainer = build(contexts, optimizer, params, multipliers, kvstore=None)
    shards = [shard(rank, steps) for rank in range(workers)]
    batches = [(np.concatenate([x[k * BATCH:(k + 1) * BATCH] for x, _ in shards]),
                np.concatenate([y[k * BATCH:(k + 1) * BATCH] for _, y in shards]))
               for k in range(steps)]
    train(net, trainer, contexts, batches, changes)
    return net.weight.data().asnumpy(), net.bias.data().asnumpy()


def module_run(optimizer, params, steps, changes, kv=None, workers=2):
    """The same model as a Module (``mod.fit``'s path: init_optimizer, forward_backward,
    update), on this rank's shard with ``kv``, or without a kvstore on every rank's rows of
    each batch; ``changes`` as in :func:`apply_change`, made on the Module's optimizer ('lr'
    sets optimizer.lr, Module having no set_learning_rate). Returns (weight, bias)."""
    ranks = [kv.rank] if kv is not None else range(workers)
    shards = [shard(rank, steps) for rank in ranks]
    rows = BATCH * len(shards)
    out = mx.sym.LinearRegressionOutput(mx.sym.FullyConnected(
        mx.sym.Variable('data'), num_hidden=OUT_UNITS, name='fc'), name='lro')
    mod = mx.mod.Module(out, context=mx.cpu(), label_names=['lro_label'])
    mod.bind([('data', (rows, IN))], [('lro_label', (rows, OUT_UNITS))])
    w0, b0 = initial_weights()
    mod.init_params(arg_params={'fc_weight': mx.nd.array(w0), 'fc_bias': mx.nd.array(b0)})
    # LinearRegressionOutput's gradient is pred - label: scaled as the Gluon model's L2Loss.
    mod.init_optimizer(kvstore=kv, optimizer=optimizer, optimizer_params=dict(
        params, rescale_grad=1.0 / (BATCH * workers * OUT_UNITS)))
    for k in range(steps):
        x = np.concatenate([x[k * BATCH:(k + 1) * BATCH] for x, _ in shards])
        y = np.concatenate([y[k * BATCH:(k + 1) * BATCH] for _, y in shards])
        mod.forward_backward(mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(y)]))
        mod.update()
        for step, kind, value in changes:
            if step == k + 1:
                setattr(mod._optimizer, 'lr' if kind == 'lr' else kind, value)
    arg_params, _ = mod.get_params()
    return arg_params['fc_weight'].asnumpy(), arg_params['fc_bias'].asnumpy()


def main():
    steps = int(os.environ['STEPS'])
    kv = mx.kv.create(os.environ['KVSTORE'])
    if os.environ.get('API') == 'module':
        weight, bias = module_run(os.environ['OPTIMIZER'],
                                  json.loads(os.environ['OPTIMIZER_PARAMS']), steps,
                                  json.loads(os.environ.get('CHANGES', '[]')), kv,
                                  kv.num_workers)
        np.savez(os.path.join(os.environ['OUT'], 'rank%d.npz' % kv.rank), weight=weight,
                 bias=bias)
        return
    contexts = [mx.cpu(i) for i in range(int(os.environ.get('CONTEXTS', '1')))]
    net, trainer = build(contexts, os.environ['OPTIMIZER'],
                         json.loads(os.environ['OPTIMIZER_PARAMS']),
                         json.loads(os.environ.get('MULTIPLIERS', '{}')), kvstore=kv,
                         update_on_kvstore=os.environ['UPDATE_ON_KVSTORE'] == '1')
    namsg.sync_initial_weights(trainer, BATCH)
    x, y = shard(kv.rank, steps if os.environ.get('REUSE_BATCH') != '1' else 1)
    rows = [0 if os.environ.get('REUSE_BATCH') == '1' else k * BATCH for k in range(steps)]
    fail = int(os.environ['FAIL_AFTER']) if os.environ.get('FAIL_RANK') == str(kv.rank) else None
    losses, lrs, mus = train(net, trainer, contexts,
                             [(x[r:r + BATCH], y[r:r + BATCH]) for r in rows],
                             json.loads(os.environ.get('CHANGES', '[]')), fail)
    np.savez(os.path.join(os.environ['OUT'], 'rank%d.npz' % kv.rank),
             weight=net.weight.data(contexts[-1]).asnumpy(),
             bias=net.bias.data(contexts[-1]).asnumpy(),
             losses=np.array(losses), lrs=np.array(lrs), mus=np.array(mus),
             num_workers=kv.num_workers)


if __name__ == '__main__':
    main()
