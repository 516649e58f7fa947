"""A worker of the distributed tests (started by namsg_dist.launch_local; not a test module).

Least squares on a fixed shard per rank; Dense(3) from fixed weights; the optimizer and the
kvstore come from the environment; the final weights go to $OUT/rank<r>.npz, the mean losses of
the last steps to the same file.
"""

import json
import os

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import namsg

IN, OUT_UNITS, BATCH = 5, 3, 8


def shard(rank, steps):
    rng = np.random.default_rng(100 + rank)
    x = rng.normal(size=(steps * BATCH, IN))
    truth = np.random.default_rng(7).normal(size=(IN, OUT_UNITS))
    return x, x @ truth


def initial_weights():
    rng = np.random.default_rng(0)
    return rng.normal(size=(OUT_UNITS, IN)) * 0.1, rng.normal(size=(OUT_UNITS,)) * 0.1


def main():
    steps = int(os.environ['STEPS'])
    kv = mx.kv.create(os.environ['KVSTORE'])
    contexts = [mx.cpu(i) for i in range(int(os.environ.get('CONTEXTS', '1')))]
    net = gluon.nn.Dense(OUT_UNITS, in_units=IN)
    net.initialize(ctx=contexts)
    w0, b0 = initial_weights()
    net.weight.set_data(mx.nd.array(w0))
    net.bias.set_data(mx.nd.array(b0))
    trainer = gluon.Trainer(net.collect_params(), os.environ['OPTIMIZER'],
                            json.loads(os.environ['OPTIMIZER_PARAMS']), kvstore=kv,
                            update_on_kvstore=os.environ['UPDATE_ON_KVSTORE'] == '1')
    namsg.sync_initial_weights(trainer, BATCH)
    x, y = shard(kv.rank, steps if os.environ.get('REUSE_BATCH') != '1' else 1)
    loss_fn = gluon.loss.L2Loss()
    losses = []
    for k in range(steps):
        row = 0 if os.environ.get('REUSE_BATCH') == '1' else k * BATCH
        xs = gluon.utils.split_and_load(mx.nd.array(x[row:row + BATCH]), contexts)
        ys = gluon.utils.split_and_load(mx.nd.array(y[row:row + BATCH]), contexts)
        with autograd.record():
            loss = [loss_fn(net(xi), yi) for xi, yi in zip(xs, ys)]
        autograd.backward(loss)
        trainer.step(BATCH)
        losses.append(np.mean([l.mean().asscalar() for l in loss]))
    np.savez(os.path.join(os.environ['OUT'], 'rank%d.npz' % kv.rank),
             weight=net.weight.data(contexts[-1]).asnumpy(),
             bias=net.bias.data(contexts[-1]).asnumpy(),
             losses=np.array(losses), num_workers=kv.num_workers)


if __name__ == '__main__':
    main()
