"""A work-around for a race in MXNet 1.9.1's Gluon Trainer with parameter servers."""

import mxnet as mx

__all__ = ['sync_initial_weights']


def sync_initial_weights(trainer, batch_size):
    """Call before the first ``trainer.step(batch_size)``: finish the Trainer's kvstore set-up (initial weights pushed by rank 0 and pulled by every
    worker) before the first gradient is pushed, and wait for every worker.

    With a ``dist_*`` kvstore and ``update_on_kvstore=False``, MXNet 1.9.1's Trainer pulls the
    initial weights and later pushes gradients under the same key, with nothing ordering the
    two: a worker whose weight pull is served after the gradients were merged starts from the
    merged gradient instead of the weights. Seen here with 2 workers in about one run in six,
    with MXNet's sgd as with ARSG; never in 10 runs with this call before the first step.
    Harmless (one barrier) in the other modes; a no-op without a distributed kvstore.
    ``batch_size`` is the one later steps use: with updates on the servers the optimizer is sent
    to them here, with its gradient scale fixed from then on. Parameters must be initialised
    (for deferred initialisation, after a first forward pass).
    """
    trainer._check_and_rescale_grad(trainer._scale / batch_size)
    trainer._init_kvstore()
    kvstore = trainer._kvstore
    if kvstore is None or 'dist' not in kvstore.type:
        return
    if trainer._params_to_init:
        trainer._init_params()
    mx.nd.waitall()
    kvstore._barrier()
