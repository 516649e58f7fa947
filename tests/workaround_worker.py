"""One training scenario of tests/test_workarounds.py, in a process of its own (``amp.init``
changes MXNet for the whole process; a ``dist_*`` kvstore needs a job). Not a test module.

    python workaround_worker.py SCENARIO OPTIMIZER FUSED KVSTORE UPDATE_ON_KVSTORE OUT [COPIES]

SCENARIO is ``amp`` or ``stale``; FUSED ``1``/``0`` (ARSG's path; ignored by other optimizers);
KVSTORE ``none`` (one CPU context, no kvstore: the reference), ``device`` or ``local`` (two CPU
contexts) or ``dist_sync`` (one context per worker of a job); UPDATE_ON_KVSTORE ``default``,
``1`` or ``0``. The results go to OUT as JSON (``OUT.rank<r>`` in a dist job). COPIES (default 1)
repeats the minibatch that many times in one process: the reference of a job whose COPIES
workers each train on the minibatch.

* ``amp``: AMP (bfloat16 on CPU) with dynamic loss scaling (``amp.init_trainer``). The first step
  overflows (its scaled gradient is inf), which AMP must skip; the second is an ordinary step.
* ``stale``: two Dense blocks; the first step uses both, the next two only the first, with
  ``trainer.step(..., ignore_stale_grad=True)``, which must leave the second block alone.
"""

import json
import sys

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import namsg  # noqa: F401  (registers 'arsg')

ROWS, IN, OUT = 8, 3, 2


def setup(kvstore, optimizer, fused, update_on_kvstore, blocks):
    contexts = [mx.cpu(0), mx.cpu(1)] if kvstore in ('device', 'local') else [mx.cpu(0)]
    nets = [gluon.nn.Dense(OUT, in_units=IN) for _ in range(blocks)]
    params = gluon.ParameterDict()
    for net in nets:
        net.initialize(mx.init.Constant(0.5), ctx=contexts)
        params.update(net.collect_params())
    kwargs = {'learning_rate': 0.1}
    if optimizer == 'arsg':
        kwargs['fused'] = fused
    trainer = gluon.Trainer(params, optimizer, kwargs,
                            kvstore=None if kvstore == 'none' else kvstore,
                            update_on_kvstore={'default': None, '1': True,
                                               '0': False}[update_on_kvstore])
    return contexts, nets, trainer


def step(contexts, nets, trainer, x, **step_kwargs):
    xs = gluon.utils.split_and_load(x, contexts)
    with autograd.record():
        losses = [sum(net(part).sum() for net in nets) for part in xs]
        if hasattr(trainer, '_amp_loss_scaler'):
            from mxnet.contrib import amp
            with amp.scale_loss(losses, trainer) as scaled:
                autograd.backward(scaled)
        else:
            autograd.backward(losses)
    trainer.step(ROWS, **step_kwargs)


def weights(net):
    return net.weight.data(mx.cpu(0)).asnumpy().tolist()


def finish(result, trainer):
    kv = trainer._kvstore
    return dict(result, update_on_kvstore=trainer._update_on_kvstore,
                rank=kv.rank if kv is not None else 0)


def amp_scenario(kvstore, optimizer, fused, update_on_kvstore, copies):
    from mxnet.contrib import amp
    amp.init(target_dtype='bfloat16')
    contexts, (net,), trainer = setup(kvstore, optimizer, fused, update_on_kvstore, 1)
    amp.init_trainer(trainer)
    # Ones and powers of two: every product and sum is exact in bfloat16, on any split.
    ones = mx.nd.ones((ROWS * copies, IN))
    result = {'initial': weights(net)}
    step(contexts, [net], trainer, ones * 1e36)      # loss * 2**16 overflows float32
    result['after_overflow'] = weights(net)
    step(contexts, [net], trainer, ones)
    result['after_normal_step'] = weights(net)
    return finish(result, trainer)


def stale_scenario(kvstore, optimizer, fused, update_on_kvstore, copies):
    contexts, (used, unused), trainer = setup(kvstore, optimizer, fused, update_on_kvstore, 2)
    x = mx.nd.array(np.tile(np.arange(ROWS * IN).reshape(ROWS, IN) / 10.0, (copies, 1)))
    step(contexts, [used, unused], trainer, x, ignore_stale_grad=True)
    result = {'unused_before': weights(unused)}
    for _ in range(2):
        step(contexts, [used], trainer, x, ignore_stale_grad=True)
    result.update(unused_after=weights(unused), used_after=weights(used))
    return finish(result, trainer)


def main(scenario, optimizer, fused, kvstore, update_on_kvstore, out, copies='1'):
    run = {'amp': amp_scenario, 'stale': stale_scenario}[scenario]
    result = run(kvstore, optimizer, fused == '1', update_on_kvstore, int(copies))
    if kvstore.startswith('dist'):
        out = '%s.rank%d' % (out, result['rank'])
    with open(out, 'w') as f:
        json.dump(result, f)


if __name__ == '__main__':
    main(*sys.argv[1:])
