"""Horovod as a kvstore of ``gluon.Trainer`` and ``Module`` in MXNet 1.7 to 1.9, and the training
scripts' Horovod mode.

MXNet 1.x registers no ``horovod`` kvstore: ``mx.kv.create('horovod')`` returns a local
store named "horovod", and ``gluon.Trainer(..., kvstore='horovod')`` or ``Module.fit(...,
kvstore='horovod')`` on one device per process creates no store at all, so every rank trains
alone without a word. Importing this module registers :class:`Horovod` under that name (what
MXNet 2.0 ships) and has MXNet create it for the string too (``import namsg`` does so), so
``gluon.Trainer(params, 'arsg', kvstore='horovod')`` and ``mod.fit(..., optimizer='arsg',
kvstore='horovod')`` average the gradients over the ranks with Horovod's allreduce, as does
``kvstore=mx.kv.create('horovod')``, after giving every rank rank 0's initial weights. The
optimizer runs on every rank on the same averaged gradients, so its states, the learning rate
and ``mu`` are the same everywhere, and rank 0 can save them for all
(``Trainer.save_states``, ``Module.save_optimizer_states``). One device per process, one store
per Trainer or Module; a process may make several, one after the other (the training scripts
make one per run), and what they queued runs at its exit, before Horovod shuts down.
``hvd.DistributedTrainer(params, 'arsg', ...)`` is the other way and
needs nothing from here.

On MXNet 1.5 and 1.6, which have no ``KVStoreBase``, this module cannot be imported and ``import
namsg`` leaves it out: there ``kvstore='horovod'`` stays MXNet's own silent local store (or none)
and every rank trains alone; use ``hvd.DistributedTrainer``.
"""

import atexit
import itertools
import logging

import mxnet as mx
from mxnet.gluon import trainer as _trainer
from mxnet.module import module as _module
from mxnet.kvstore import KVStoreBase

__all__ = ['Horovod']

logger = logging.getLogger(__name__)


def _finish_queued_operations():
    """At exit, before Horovod shuts down: wait for the operations still in MXNet's engine.

    A store's broadcasts and allreduces are queued, not run, when called (a Trainer broadcasts
    its weights at its first step or ``load_states``, a Module at ``init_optimizer``), and
    every ``hvd.init()`` registers Horovod's ``shutdown`` with :mod:`atexit`, to run before
    MXNet's own wait at exit: an operation still queued then failed, and the ranks of a job that
    had succeeded printed an MXNetError traceback ("Horovod has been shut down"). If they fail
    here (another rank stopped before taking part), that is logged in one line, the error.
    """
    try:
        mx.nd.waitall()
    except mx.base.MXNetError as e:
        logger.error('the horovod kvstore: operations still queued at exit could not run: %s',
                     e)


@KVStoreBase.register
class Horovod(KVStoreBase):
    """Allreduce through Horovod (``horovod.mxnet``, which must be installed; ``hvd.init()`` is
    called here). ``pushpull`` averages over the ranks, as ``hvd.DistributedTrainer`` does,
    so ``trainer.step(batch_size)`` takes the batch size of one rank. Raises ImportError with
    the install command if Horovod is missing."""

    #: How many stores this process created: each has its own names for Horovod's operations,
    #: which must differ between tensors in flight together (two Trainers stepping one after
    #: the other would both reduce "key 0") and match across the ranks, which create their
    #: stores in the same order.
    _created = itertools.count()

    def __init__(self):
        try:
            import horovod.mxnet as hvd
        except ImportError as e:
            raise ImportError(
                'the horovod kvstore needs Horovod 0.28.1 built for this MXNet (the recipe, '
                'with what a path holding a space needs: docs/scaling/horovod.md, or bash '
                '.ci/horovod.sh in a clone) (%s)' % e) from e
        hvd.init()
        # Registered again after each hvd.init(), whose shutdown it must precede (atexit runs
        # the last registered first).
        atexit.unregister(_finish_queued_operations)
        atexit.register(_finish_queued_operations)
        self._hvd = hvd
        self._prefix = 'namsg.%d.' % next(Horovod._created)

    def broadcast(self, key, value, out, priority=0):
        """Rank 0's ``value`` into ``out`` (an NDArray or a list of them) on every rank."""
        result = self._hvd.broadcast(value, root_rank=0, name=self._prefix + 'broadcast.%s' % key,
                                     priority=priority)
        for target in out if isinstance(out, (list, tuple)) else [out]:
            result.copyto(target)

    def pushpull(self, key, value, out=None, priority=0):
        """The mean over the ranks of ``value`` (an NDArray, or a one-element list: one device
        per process), written to ``out`` if given, else to ``value``."""
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise ValueError('the horovod kvstore takes one device per process, got %d '
                                 'arrays for key %s; start one process per device'
                                 % (len(value), key))
            value = value[0]
        name = self._prefix + 'pushpull.%s' % key
        if out is None:
            self._hvd.allreduce_(value, op=self._hvd.Average, name=name, priority=priority)
            return
        result = self._hvd.allreduce(value, op=self._hvd.Average, name=name,
                                     priority=priority)
        for target in out if isinstance(out, (list, tuple)) else [out]:
            result.copyto(target)

    def set_gradient_compression(self, compression_params):
        """Not supported (``compression_params`` of a Trainer or Module): raises ValueError."""
        raise ValueError(
            'the horovod kvstore does not compress gradients (compression_params=%r): drop '
            'compression_params, or use Horovod\'s own compression with its trainer, '
            'hvd.DistributedTrainer(params, optimizer, compression=hvd.Compression.fp16)'
            % (compression_params,))

    @staticmethod
    def is_capable(capability):
        """No optimizer runs in the store: the Trainer updates on every rank."""
        if capability.lower() == KVStoreBase.OPTIMIZER:
            return False
        raise ValueError('Unknown capability: %s' % capability)

    def set_optimizer(self, optimizer):
        raise NotImplementedError('the horovod kvstore runs no optimizer; use '
                                  'update_on_kvstore=False (the default for it)')

    def save_optimizer_states(self, fname, dump_optimizer=False):
        raise NotImplementedError('save the Trainer\'s states on rank 0 (Trainer.save_states)')

    def load_optimizer_states(self, fname):
        raise NotImplementedError('load the Trainer\'s states on every rank '
                                  '(Trainer.load_states)')

    @property
    def type(self):
        return 'horovod'

    @property
    def rank(self):
        return self._hvd.rank()

    @property
    def num_workers(self):
        return self._hvd.size()


# MXNet's choice of store for a Trainer, a Module and a FeedForward (mxnet.model's functions,
# imported by name into the first two modules; the same signatures in MXNet 1.7 to 1.9).
_mxnet_create_kvstore = mx.model._create_kvstore
_mxnet_initialize_kvstore = mx.model._initialize_kvstore


def _create_kvstore(kvstore, num_device, arg_params):
    """MXNet's ``_create_kvstore``, except that the name 'horovod' gives a :class:`Horovod`
    store (MXNet drops a store name without 'dist' on one device), which must have one device.
    Raises ValueError for several devices per process."""
    if isinstance(kvstore, str) and kvstore.lower() == 'horovod':
        kvstore = Horovod()
    if isinstance(kvstore, Horovod):
        if num_device != 1:
            raise ValueError(
                'the horovod kvstore takes one device per process, got %d: start one process '
                'per device (horovodrun -np <processes x devices>) and give each its own, '
                'e.g. mx.gpu(hvd.local_rank())' % num_device)
        return kvstore, False
    return _mxnet_create_kvstore(kvstore, num_device, arg_params)


def _initialize_kvstore(kvstore, param_arrays, arg_params, param_names, update_on_kvstore):
    """MXNet's ``_initialize_kvstore`` (Module, FeedForward), except that a :class:`Horovod`
    store gives every rank rank 0's initial weights, on its device and in the Module's
    ``arg_params``, as a Trainer does: MXNet only calls ``kvstore.init``, and each rank would
    start from its own weights."""
    if not isinstance(kvstore, Horovod):
        return _mxnet_initialize_kvstore(kvstore, param_arrays, arg_params, param_names,
                                         update_on_kvstore)
    for name, on_devices in zip(param_names, param_arrays):
        kvstore.broadcast(name, arg_params[name], out=list(on_devices) + [arg_params[name]])
    return None


for _namespace in (mx.model, _module, _trainer):
    _namespace._create_kvstore = _create_kvstore
for _namespace in (mx.model, _module):
    _namespace._initialize_kvstore = _initialize_kvstore

