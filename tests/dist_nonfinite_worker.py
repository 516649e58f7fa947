"""A worker of test_nonfinite's distributed test (started by namsg_dist.launch_local; not a test
module): dist_worker's least-squares job with skip_nonfinite_grad=True, in which rank 0 puts a
NaN into the weight's gradient before step $POISON_STEP. Saves the final weights and what this
worker's optimizer counted to $OUT/rank<r>.npz.

:func:`poisoned_local_run` is the same job in one process without a kvstore (the reference)."""

import json
import os

import mxnet as mx
import numpy as np

import dist_worker


def poison_step(net, trainer, contexts, step):
    """Make ``trainer.step`` put a NaN into the weight's gradient at its ``step``-th call."""
    original = trainer.step
    calls = []

    def step_with_poison(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            net.weight.grad(contexts[-1])[0, 0] = np.nan
        return original(*args, **kwargs)
    trainer.step = step_with_poison


def poisoned_local_run(params, steps, workers, step):
    """(weight, bias) of the job run in one process on every rank's rows, the same poison."""
    contexts = [mx.cpu()]
    net, trainer = dist_worker.build(contexts, 'arsg', params, kvstore=None)
    poison_step(net, trainer, contexts, step)
    shards = [dist_worker.shard(rank, steps) for rank in range(workers)]
    rows = dist_worker.BATCH
    batches = [(np.concatenate([x[k * rows:(k + 1) * rows] for x, _ in shards]),
                np.concatenate([y[k * rows:(k + 1) * rows] for _, y in shards]))
               for k in range(steps)]
    dist_worker.train(net, trainer, contexts, batches)
    return net.weight.data().asnumpy(), net.bias.data().asnumpy()


def main():
    steps = int(os.environ['STEPS'])
    kv = mx.kv.create('dist_sync')
    contexts = [mx.cpu()]
    net, trainer = dist_worker.build(contexts, 'arsg', json.loads(os.environ['OPTIMIZER_PARAMS']),
                                     kvstore=kv,
                                     update_on_kvstore=os.environ['UPDATE_ON_KVSTORE'] == '1')
    mx.nd.waitall()
    import namsg
    namsg.sync_initial_weights(trainer, dist_worker.BATCH)
    if kv.rank == 0:
        poison_step(net, trainer, contexts, int(os.environ['POISON_STEP']))
    x, y = dist_worker.shard(kv.rank, steps)
    batch = dist_worker.BATCH
    dist_worker.train(net, trainer, contexts,
                      [(x[k * batch:(k + 1) * batch], y[k * batch:(k + 1) * batch])
                       for k in range(steps)])
    np.savez(os.path.join(os.environ['OUT'], 'rank%d.npz' % kv.rank),
             weight=net.weight.data().asnumpy(), bias=net.bias.data().asnumpy(),
             skips=json.dumps(trainer.optimizer.nonfinite_skips))


if __name__ == '__main__':
    main()
