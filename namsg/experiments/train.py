"""The training loop of the MNIST and CIFAR-10 experiments: one run (protocol, method, seed)
trained on its contexts and kvstore with the paper's optimizer and boost, its log and
checkpoint written after every epoch, resumed exactly where it stopped; and a list of runs
trained so that processes started together share them out.

An interrupted run resumes from its last complete epoch and ends as an uninterrupted one would:
each epoch's shuffle and augmentation depend only on (seed, epoch). Its files are described in
:mod:`~namsg.experiments.logs` and :mod:`~namsg.experiments.checkpoints`; what is done with
them before training, in :mod:`~namsg.experiments.resume`.
"""

import contextlib
import json
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from .. import _mxnet
from ..boost import ObservationBoost
from . import models
from .checkpoints import Checkpoints
from .hparams import optimizer_kwargs
from .locks import RunBusy, keep_folders, run_lock
from .logs import log_holds, write_log
from .progress import Progress, Tally, format_record
from .resume import run_state
from .runs import CheckpointError, config_of, run_header


def check_kvstore(kvstore):
    """Refuse a ``kvstore`` (a name of ``--kvstore``) that this MXNet cannot train with, before
    any work: ``horovod`` is namsg's Horovod store (:class:`namsg.horovod_store.Horovod`), a
    subclass of ``mxnet.kvstore.KVStoreBase``, which MXNet has from 1.7 on.

    Raises
    ------
    ValueError
        For ``horovod`` on MXNet 1.5 or 1.6, naming the release it needs and the alternative.
    """
    if kvstore == 'horovod' and not _mxnet.has_kvstore_base():
        raise ValueError(
            'namsg\'s horovod kvstore needs MXNet 1.7 or later (mxnet.kvstore.KVStoreBase) and '
            'this is MXNet %s: train on parameter servers with --kvstore dist_sync (started by '
            'python -m namsg_dist launch, docs/scaling/parameter-servers.md), or install MXNet '
            '1.7 to 1.9 for Horovod (docs/scaling/horovod.md)' % mx.__version__)


def create_kvstore(kvstore):
    """The store for ``kvstore``, a name of ``--kvstore``: a
    :class:`~namsg.horovod_store.Horovod` store for ``horovod`` (every rank a process of
    ``horovodrun``), MXNet's for ``dist_*``, else the name itself. Raises ValueError for
    ``horovod`` on MXNet 1.5 and 1.6 (:func:`check_kvstore`)."""
    check_kvstore(kvstore)
    if kvstore == 'horovod':
        from ..horovod_store import Horovod      # MXNet 1.7 and later only: not imported above
        return Horovod()
    if kvstore.startswith('dist'):
        return mx.kv.create(kvstore)
    return kvstore


def make_trainer(net, protocol, method, kvstore, overrides=None):
    """The Trainer for ``method`` (see :func:`~namsg.experiments.hparams.optimizer_kwargs`). A
    distributed ``kvstore`` (an mx.kv.KVStore) updates on the servers."""
    spec, kwargs = optimizer_kwargs(protocol, method, overrides)
    # MXNet 1.5 and 1.6 have only their own stores, which all run an optimizer, and no
    # is_capable; from 1.7 a Python store such as Horovod's may run none.
    on_servers = not isinstance(kvstore, str) and kvstore is not None and (
        not hasattr(kvstore, 'is_capable') or kvstore.is_capable('optimizer'))
    trainer = gluon.Trainer(net.collect_params(), spec.name, kwargs, kvstore=kvstore,
                            update_on_kvstore=True if on_servers else None)
    return trainer, spec, kwargs


def train_all(runs, train, echo=None):
    """``[train(run, wait) for run in runs]``, except that a run another process is training
    (``train`` raises RunBusy with ``wait=False``) is put off until the others are done, then
    waited for (``wait=True``): it is then skipped as finished, or resumed where the other
    process stopped. Processes started with overlapping runs so share them out, and no run is
    trained by two at once. ``echo`` is told of each run put off and each wait."""
    results, later = [None] * len(runs), []
    for i, run in enumerate(runs):
        try:
            results[i] = train(run, False)
        except RunBusy as e:
            if echo is not None:
                echo('%s: put off until the other runs are done' % e)
            later.append((i, e))
    for i, busy in later:
        if echo is not None:
            echo('%s: waiting for %s to finish or stop it'
                 % (busy.run, busy.holder or 'the other process'))
        results[i] = train(runs[i], True)
    return results


def _load(x, y, contexts):
    """A NumPy minibatch split over the contexts."""
    return (gluon.utils.split_and_load(mx.nd.array(x), contexts, even_split=False),
            gluon.utils.split_and_load(mx.nd.array(y), contexts, even_split=False))


def _evaluate(net, batches, contexts, loss_fn):
    tally = Tally()
    for x, y in batches:
        xs, ys = _load(x, y, contexts)
        outs = [net(xi) for xi in xs]
        tally.add(outs, ys, [loss_fn(o, yi) for o, yi in zip(outs, ys)])
    return tally.means()


def train_run(protocol, method, seed, prepared, log_path, checkpoint_dir, contexts=None,
              kvstore='device', overrides=None, progress=False, command=None, data_source='',
              data_fingerprint=None, echo=None, progress_every=None, wait=False):
    """Train one run, resuming from its checkpoint if there is one; returns the epoch records.

    The log at ``log_path`` is rewritten atomically after every epoch from the records kept in
    the checkpoint, so log and checkpoint always agree. ``echo`` (e.g. print) receives one line
    per epoch, and one when the run is skipped as finished or resumed; ``progress`` shows a
    progress bar over each epoch's minibatches, else ``progress_every`` (seconds) has a line
    echoed at most that often within an epoch (batch, running loss, images/s).
    ``data_source`` (where the data lies) is logged for information; ``data_fingerprint``
    (``Dataset.fingerprint()``) is part of the configuration that must match to resume, so a
    run moves between machines and paths but never onto other data.

    The run's log and checkpoint folder are locked for this process
    (:func:`~namsg.experiments.locks.run_lock`) from before its state is read until it returns:
    if another process is training the run, this raises RunBusy (after 3 s), or with ``wait``
    waits until the other is done and then goes on from what it left (skipped if finished,
    resumed if stopped). A ``dist_*`` or ``horovod`` job cannot wait (its other ranks would
    train on): its rank 0 raises CheckpointError.

    With a ``dist_*`` kvstore (a worker of a job started by ``python -m namsg_dist launch``) the
    optimizer runs on the servers, each worker trains on its shard of every epoch's shuffled
    order (whole batches only), only rank 0 writes the log and echoes, and there are no
    checkpoints (MXNet cannot save optimizer states that live on servers). With ``horovod``
    (every rank a process of ``horovodrun``) the gradients are averaged by allreduce and every
    rank updates alike: each trains on its shard, rank 0 logs and checkpoints, and every rank
    resumes from rank 0's checkpoint; it needs MXNet 1.7 or later, and raises ValueError before
    any work on 1.5 and 1.6 (:func:`check_kvstore`).
    """
    check_kvstore(kvstore)
    contexts = contexts or [mx.cpu()]
    mx.random.seed(seed)
    net = models.build(protocol.model)
    net.initialize(mx.init.Xavier(), ctx=contexts)
    net.hybridize(static_alloc=True, static_shape=True)
    distributed = kvstore.startswith('dist') or kvstore == 'horovod'
    checkpointed = not kvstore.startswith('dist')     # the optimizer states are here
    store = create_kvstore(kvstore)
    rank, workers = (store.rank, store.num_workers) if distributed else (0, 1)
    trainer, spec, _ = make_trainer(net, protocol, method, store, overrides)
    policy = ObservationBoost(trainer, boost_epochs=[protocol.boost_epoch]) if spec.boost else None
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    header = run_header(protocol, method, seed, prepared, contexts, kvstore, overrides, command,
                        data_source, data_fingerprint, workers)
    # Rank 0 alone writes the log and the checkpoints.
    written = [] if rank != 0 else [log_path] + ([checkpoint_dir] if checkpointed else [])
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(run_lock(written, header['run'],
                                        wait=wait and not distributed))
        except RunBusy as e:
            if not distributed:
                raise
            # Its other ranks would wait for rank 0 for ever: the job ends, saying why.
            raise CheckpointError('%s; a %s job cannot wait for it: let that process finish '
                                  'or stop it, then start this job again' % (e, kvstore)) from e
        state = run_state(header, log_path, checkpoint_dir, not checkpointed)
        if rank != 0:       # after run_state, so that every rank decides alike
            log_path = echo = None
        if state.note and echo is not None:
            echo('%s: %s' % (header['run'], state.note))
        if state.kind == 'finished':
            return state.records
        checkpoints = Checkpoints(checkpoint_dir)
        records, first_epoch, iteration = [], 1, 0
        if state.kind == 'resume':
            # state.json was read whole by run_state
            saved = json.loads((state.checkpoint / 'state.json').read_text())
            net.load_parameters(str(state.checkpoint / 'net.params'), ctx=contexts)
            trainer.load_states(str(state.checkpoint / 'trainer.states'))
            if policy is not None:      # it follows the trainer's new optimizer by itself
                policy.load_state_dict(saved['policy'])
            records, iteration = saved['records'], saved['iteration']
            first_epoch = saved['epoch'] + 1

        for epoch in range(first_epoch, protocol.epochs + 1):
            start = time.time()
            boost = policy.epoch_begin(epoch) if policy is not None else None
            # Each epoch's shuffle and augmentation depend only on (seed, epoch): resumable.
            rng = np.random.default_rng([seed, epoch])
            mx.random.seed(seed * 100003 + epoch)
            tally = Tally()
            batches = prepared.train_batches(protocol.batch_size, rng, rank, workers,
                                             whole_batches=distributed)
            steps = -(-len(prepared.train_y) // (protocol.batch_size * workers))
            for x, y in Progress(batches, steps, '%s epoch %d' % (header['run'], epoch), tally,
                                 bar=progress, every=progress_every, echo=echo):
                xs, ys = _load(x, y, contexts)
                with autograd.record():
                    outs = [net(xi) for xi in xs]
                    losses = [loss_fn(o, yi) for o, yi in zip(outs, ys)]
                autograd.backward(losses)
                trainer.step(len(y))
                iteration += 1
                tally.add(outs, ys, losses)
            train_loss, train_acc = tally.means()
            val_loss, val_acc = _evaluate(net, prepared.test_batches(protocol.batch_size),
                                          contexts, loss_fn)
            optimizer = trainer.optimizer
            records.append(dict(type='epoch', epoch=epoch, iteration=iteration,
                                train_loss=train_loss, train_acc=train_acc,
                                val_loss=val_loss, val_acc=val_acc,
                                lr=logged_lr(optimizer, iteration),
                                mu=getattr(optimizer, 'mu', None),
                                seconds=time.time() - start, boost=boost))
            if policy is not None:
                policy.epoch_end(epoch, records[-1]['train_loss'])
            if checkpointed and rank == 0:
                checkpoints.save(epoch, net, trainer, dict(
                    config=config_of(header), epoch=epoch, iteration=iteration, records=records,
                    policy=policy.state_dict() if policy is not None else None))
                keep_folders(checkpoint_dir)
            if log_path is not None:
                write_log(log_path, header, records)
                keep_folders(log_path)
            if echo is not None:
                echo(format_record(header['run'], records[-1]))
        if first_epoch > protocol.epochs and log_path is not None and \
                not log_holds(log_path, records):
            # Finished earlier, its log lost or damaged (run_state's note says so): rebuilt.
            write_log(log_path, state.header or header, records)
    return records


def logged_lr(optimizer, iteration):
    """The step size in force after ``iteration`` steps. On a parameter-server worker the
    optimizer never updates (the servers do), so its own count stays at 0 and
    ``learning_rate`` would show a schedule's first value for ever: ask the schedule."""
    if optimizer.lr_scheduler is not None and optimizer.num_update < iteration:
        return optimizer.lr_scheduler(iteration)
    return optimizer.learning_rate
