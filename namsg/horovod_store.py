"""Horovod as a kvstore of ``gluon.Trainer`` in MXNet 1.9, and the training scripts' Horovod mode.

MXNet 1.9.1 registers no ``horovod`` kvstore: ``mx.kv.create('horovod')`` returns a local
store named "horovod", and ``gluon.Trainer(..., kvstore='horovod')`` on one device per process
creates no store at all, so every rank trains alone without a word. Importing this module
registers :class:`Horovod` under that name (what MXNet 2.0 ships) and has ``gluon.Trainer``
create it for the string too (``import namsg`` does so), so ``gluon.Trainer(params, 'arsg',
kvstore='horovod')`` averages the gradients over the ranks with Horovod's allreduce, as does
``kvstore=mx.kv.create('horovod')``. The optimizer runs on every rank on the same averaged
gradients, so its states, the learning rate and ``mu`` are the same everywhere, and rank 0 can
save them for all (``Trainer.save_states``).
``hvd.DistributedTrainer(params, 'arsg', ...)`` is the other way and needs nothing from here.
"""

import os

import mxnet as mx
from mxnet.gluon import trainer as _trainer
from mxnet.kvstore import KVStoreBase

__all__ = ['Horovod', 'create_kvstore', 'job_workers']


@KVStoreBase.register
class Horovod(KVStoreBase):
    """Allreduce through Horovod (``horovod.mxnet``, which must be installed; ``hvd.init()`` is
    called here). ``pushpull`` averages over the ranks, as ``hvd.DistributedTrainer`` does,
    so ``trainer.step(batch_size)`` takes the batch size of one rank. Raises ImportError with
    the install command if Horovod is missing."""

    def __init__(self):
        try:
            import horovod.mxnet as hvd
        except ImportError as e:
            raise ImportError(
                'the horovod kvstore needs Horovod built for MXNet: pip install wheel setuptools '
                'cloudpickle psutil pyyaml packaging, then HOROVOD_WITH_MXNET=1 '
                'HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 pip install --no-build-isolation '
                'horovod==0.28.1 (%s)' % e) from e
        hvd.init()
        self._hvd = hvd

    def broadcast(self, key, value, out, priority=0):
        """Rank 0's ``value`` into ``out`` (an NDArray or a list of them) on every rank."""
        result = self._hvd.broadcast(value, root_rank=0, name='namsg.broadcast.%s' % key,
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
        name = 'namsg.pushpull.%s' % key
        if out is None:
            self._hvd.allreduce_(value, op=self._hvd.Average, name=name, priority=priority)
            return
        result = self._hvd.allreduce(value, op=self._hvd.Average, name=name,
                                     priority=priority)
        for target in out if isinstance(out, (list, tuple)) else [out]:
            result.copyto(target)

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


_mxnet_create_kvstore = _trainer._create_kvstore


def _create_kvstore(kvstore, num_device, arg_params):
    """MXNet 1.9's choice of store for gluon.Trainer, except that the name 'horovod' gives the
    Horovod store (MXNet drops a store name without 'dist' on one device)."""
    if isinstance(kvstore, str) and kvstore.lower() == 'horovod':
        return Horovod(), False
    return _mxnet_create_kvstore(kvstore, num_device, arg_params)


_trainer._create_kvstore = _create_kvstore


def create_kvstore(kvstore):
    """The training scripts' store for ``--kvstore``: a :class:`Horovod` store for
    ``horovod`` (run under ``horovodrun``), MXNet's for ``dist_*``, else the name itself."""
    if kvstore == 'horovod':
        return Horovod()
    if kvstore.startswith('dist'):
        return mx.kv.create(kvstore)
    return kvstore


def job_workers(kvstore):
    """The job's number of processes for ``--kvstore``, from what its launcher set before any
    kvstore exists: horovodrun's HOROVOD_SIZE, dmlc_tracker's DMLC_NUM_WORKER, else 1."""
    if kvstore == 'horovod':
        return int(os.environ.get('HOROVOD_SIZE', 1))
    return int(os.environ.get('DMLC_NUM_WORKER', 1))
