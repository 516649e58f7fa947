"""One training loop for the MNIST and CIFAR-10 experiments: contexts, kvstore, the paper's
optimizers and boost, JSON-lines logs, atomic checkpoints and exact resume.

A run is (protocol, method, seed). Its log is one JSON line per epoch after a header line with
the configuration and versions; its checkpoints are whole directories renamed into place, so an
interrupted run resumes from its last complete epoch and ends as an uninterrupted one would.
"""

import contextlib
import json
import logging
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

try:
    import fcntl
except ImportError:     # Windows: runs are not locked (see run_lock)
    fcntl = None

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import namsg
from ..boost import ObservationBoost
from ..horovod_store import create_kvstore
from . import models
from .files import write_atomic
from .hparams import paper_optimizer

logger = logging.getLogger(__name__)


# --- data preparation: one place for the choices the paper leaves open ------------------------

CIFAR_CROP = 28


class Prepared:
    """Training and validation arrays ready for the network (float32, N x C x H x W), and the
    training-time augmentation, if any."""

    def __init__(self, train_x, train_y, test_x, test_y, augment=None):
        self.train_x, self.train_y = train_x, train_y
        self.test_x, self.test_y = test_x, test_y
        self.augment = augment

    def train_batches(self, batch_size, rng, rank=0, workers=1, whole_batches=False):
        """Shuffled minibatches; the last, partial one is kept (Gluon DataLoader's default)
        unless ``whole_batches``. With ``workers`` > 1 this worker takes every ``workers``-th
        example of the shuffled order from ``rank`` on. A parameter-server job asks for whole
        batches even with one worker: MXNet refuses a batch size that changes when the servers
        update, and every worker then makes the same number of steps."""
        order = rng.permutation(len(self.train_y))
        if workers > 1:
            order = order[rank::workers]
        if whole_batches or workers > 1:
            order = order[:len(self.train_y) // workers // batch_size * batch_size]
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            x = self.train_x[rows]
            if self.augment is not None:
                x = self.augment(x, rng)
            yield x, self.train_y[rows]

    def test_batches(self, batch_size):
        for start in range(0, len(self.test_y), batch_size):
            yield (self.test_x[start:start + batch_size], self.test_y[start:start + batch_size])


def prepare_mnist(dataset):
    """Pixels scaled to [0, 1] (B.1 states no preprocessing; this is the conventional one)."""
    def to_input(images):
        return (images.astype(np.float32) / 255.0)[:, None, :, :]
    return Prepared(to_input(dataset.train.images), dataset.train.labels,
                    to_input(dataset.test.images), dataset.test.labels)


def random_crop_flip(x, rng, crop=CIFAR_CROP):
    """B.3: a random crop x crop window of the image or of its horizontal flip."""
    n, _, h, w = x.shape
    flip = rng.random(n) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, :, ::-1], x)
    top = rng.integers(0, h - crop + 1, size=n)
    left = rng.integers(0, w - crop + 1, size=n)
    rows = top[:, None] + np.arange(crop)[None, :]
    cols = left[:, None] + np.arange(crop)[None, :]
    return x[np.arange(n)[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]


def prepare_cifar10(dataset):
    """B.3: subtract the training set's global mean and divide by its standard deviation (one
    scalar each over all pixels and channels); validation images are normalised the same way
    and kept at 32x32."""
    train = dataset.train.images.astype(np.float32)
    mean, std = float(train.mean()), float(train.std())

    def to_input(images):
        return ((images.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2).copy()
    return Prepared(to_input(dataset.train.images), dataset.train.labels,
                    to_input(dataset.test.images), dataset.test.labels,
                    augment=random_crop_flip)


PREPARE = {'mnist': prepare_mnist, 'cifar10': prepare_cifar10}


# --- files -----------------------------------------------------------------------------------

def write_log(path, header, records):
    write_atomic(path, ''.join(json.dumps(line) + '\n' for line in [header] + records))


class LogError(ValueError):
    """A file where a log should be is not a complete namsg training log."""


def read_log(path):
    """(header, epoch records) of a JSON-lines log; LogError names the file and the line when
    it is damaged (e.g. cut short mid-line by a full disk or a killed process)."""
    lines = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LogError('%s: line %d is not a complete JSON record (%s); the log was cut '
                           'short or damaged' % (path, number, e)) from e
    if not lines or not isinstance(lines[0], dict) or lines[0].get('type') != 'header':
        raise LogError('%s is not a namsg training log (no header line)' % path)
    return lines[0], [line for line in lines[1:] if line.get('type') == 'epoch']


def versions():
    return dict(namsg=namsg.__version__, mxnet=mx.__version__, numpy=np.__version__,
                python=platform.python_version())


class CheckpointError(Exception):
    """A checkpoint or a log exists but belongs to another configuration."""


class CheckpointDamaged(Exception):
    """A file of a checkpoint is missing or cannot be read (``path``, ``why``)."""

    def __init__(self, path, why):
        super().__init__('%s %s' % (path, why))
        self.path, self.why = path, why


class Checkpoints:
    """``root/epoch-NNNN/`` directories, each complete or absent: written under a temporary
    name, then renamed. The newest complete one is the resume point; older ones are removed."""

    def __init__(self, root):
        self.root = Path(root)

    #: The files of a checkpoint (in the order ``read`` checks them), and the keys of its
    #: state.json.
    FILES = ('state.json', 'net.params', 'trainer.states')
    STATE_KEYS = ('config', 'epoch', 'iteration', 'records', 'policy')

    def latest(self):
        """The newest ``epoch-NNNN`` directory, or None. Each was renamed into place whole, so
        one that is incomplete was damaged afterwards: ``read`` says so."""
        if not self.root.is_dir():
            return None
        done = sorted(p for p in self.root.glob('epoch-*') if p.is_dir())
        return done[-1] if done else None

    @classmethod
    def read(cls, checkpoint, check=None):
        """The state.json of ``checkpoint`` (a dict), after reading each of its files as
        ``train_run`` will load it; CheckpointDamaged names the first file that is missing or
        cannot be read. ``check(state)``, if given, runs as soon as state.json is read: a
        checkpoint of another configuration is named as such, whatever its other files hold.
        Writes nothing."""
        import pickle
        state = None
        for name in cls.FILES:
            path = checkpoint / name
            if not path.is_file():
                raise CheckpointDamaged(path, 'is missing')
            try:
                if name == 'net.params':
                    mx.nd.load(str(path))
                elif name == 'trainer.states':
                    pickle.loads(path.read_bytes())     # what Trainer.load_states unpickles
                else:
                    state = json.loads(path.read_text())
                    if check is not None and isinstance(state, dict) and 'config' in state:
                        check(state)
                    missing = [k for k in cls.STATE_KEYS if k not in state]
                    if missing:
                        raise ValueError('no %s in it' % ', '.join(missing))
            except CheckpointError:
                raise
            except Exception as e:   # noqa: BLE001 -- any failure to read means a damaged file
                # MXNet's message ends with its C++ check; the traceback before it names no file.
                lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
                last = lines[-1] if lines else 'empty or cut short'
                kind = type(e).__name__
                raise CheckpointDamaged(path, 'cannot be read (%s: %s)' % (
                    kind, last[len(kind) + 2:] if last.startswith(kind + ': ') else last)) from e
        return state

    def save(self, epoch, net, trainer, state):
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix='.incomplete-'))
        try:
            net.save_parameters(str(tmp / 'net.params'))
            trainer.save_states(str(tmp / 'trainer.states'))
            (tmp / 'state.json').write_text(json.dumps(state))
            final = self.root / ('epoch-%04d' % epoch)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.root.glob('epoch-*'):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)


# --- one process per run --------------------------------------------------------------------

class RunBusy(Exception):
    """Another process is training run ``run``: it holds the lock of ``path``, a file the run
    writes (``holder``: 'pid N on HOST', as that process wrote it, or None)."""

    def __init__(self, run, path, holder):
        super().__init__('%s is being trained by another process%s (it holds the lock on %s)'
                         % (run, ', ' + holder if holder else '', path))
        self.run, self.path, self.holder = run, path, holder


def _lock_file(path):
    path = Path(path)
    return path.parent / ('.%s.lock' % path.name)


# A process that only checks a run, or skips it as finished, holds its lock for milliseconds;
# one that trains it holds it for the whole run. Two processes started together walk the same
# runs in step, so a lock held no longer than this is the other's check, not a run being trained
# (without the wait, finished runs were put off as "being trained by another process").
_CHECK_HOLD = 3.0       # seconds


def _lock(path, run, wait):
    """An open descriptor holding the exclusive flock of ``path``'s lock file (see run_lock),
    or None where the file system cannot lock."""
    lock_file = _lock_file(path)
    deadline = time.monotonic() + _CHECK_HOLD
    while True:
        fd = os.open(str(lock_file), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode('utf-8', 'replace').strip()
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise RunBusy(run, path, holder) from None
        except OSError as e:        # e.g. ENOLCK on a network file system without locks
            os.close(fd)
            logger.warning(
                '%s is not locked (%s): make sure no other process trains %s at the same '
                'time', path, e.strerror or e, run)
            return None
        except BaseException:       # Ctrl-C while waiting
            os.close(fd)
            raise
        # The last holder removes the file as it lets go: a lock taken on a file opened just
        # before that protects nothing, as the next process makes a new file. Take it again.
        try:
            current = os.stat(str(lock_file))
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            os.ftruncate(fd, 0)
            os.write(fd, ('pid %d on %s' % (os.getpid(), socket.gethostname())).encode())
            return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(paths, run, wait=False, create=True):
    """Hold the files run ``run`` writes (``paths``: its log, its checkpoint folder) for this
    process alone, so that two processes never train one run at once.

    Each path gets a lock file ``.NAME.lock`` beside it, held with an exclusive ``flock`` and
    naming this process. Without ``wait``, a path another process holds for longer than a check
    takes (3 s) raises RunBusy (and this process holds none of them); with ``wait``, this blocks
    until the other lets go (Ctrl-C still interrupts). ``create=False`` (a check that writes nothing) skips paths whose
    folder does not exist yet: no other process has begun writing there. On leaving, the lock
    files are removed; a process that dies, even by SIGKILL, loses its locks with it, so a lock
    file it leaves behind locks nothing. Without flock (Windows; a file system that refuses it,
    with a warning) the run is not locked.
    """
    held = []
    try:
        for path in paths:
            if fcntl is None or path is None:
                continue
            if not Path(path).parent.is_dir():
                if not create:
                    continue
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = _lock(path, run, wait)
            if fd is not None:
                held.append((path, fd))
        yield
    finally:
        for path, fd in reversed(held):
            with contextlib.suppress(OSError):
                os.unlink(str(_lock_file(path)))      # while locked: see _lock
            os.close(fd)


# --- the run ---------------------------------------------------------------------------------

def run_name(protocol, method, seed):
    return '%s/%s/seed%d' % (protocol.setting, method, seed)


def optimizer_kwargs(protocol, method, overrides=None):
    """(spec, kwargs) of ``method``'s optimizer: Table A1's hyper-parameters (``overrides``
    replace some, e.g. in a grid search), the protocol's weight decay and its step-size drop."""
    spec = paper_optimizer(method, protocol.setting)
    kwargs = dict(spec.kwargs, **(overrides or {}))
    kwargs['wd'] = protocol.wd
    if protocol.lr_drop_iteration is not None:
        kwargs['lr_scheduler'] = mx.lr_scheduler.MultiFactorScheduler(
            step=[protocol.lr_drop_iteration], factor=1.0 / protocol.lr_drop_factor,
            base_lr=kwargs['learning_rate'])
    return spec, kwargs


def make_trainer(net, protocol, method, kvstore, overrides=None):
    """The Trainer for ``method`` (see optimizer_kwargs). A distributed ``kvstore`` (an
    mx.kv.KVStore) updates on the servers."""
    spec, kwargs = optimizer_kwargs(protocol, method, overrides)
    on_servers = not isinstance(kvstore, str) and kvstore is not None and \
        kvstore.is_capable(mx.kv.KVStoreBase.OPTIMIZER)
    trainer = gluon.Trainer(net.collect_params(), spec.name, kwargs, kvstore=kvstore,
                            update_on_kvstore=True if on_servers else None)
    return trainer, spec, kwargs


def run_header(protocol, method, seed, prepared, contexts=None, kvstore='device',
               overrides=None, command=None, data_source='', data_fingerprint=None,
               workers=None):
    """The header line of a run's log: its configuration (what must match to resume) and what
    describes the machine (versions, command, data path). ``workers``: the job's worker count,
    for a ``dist_*`` or ``horovod`` kvstore."""
    spec, kwargs = optimizer_kwargs(protocol, method, overrides)
    header = dict(type='header', run=run_name(protocol, method, seed), method=method, seed=seed,
                  protocol=protocol._asdict(), optimizer=spec.name,
                  optimizer_params={k: v for k, v in kwargs.items() if k != 'lr_scheduler'},
                  boost_epoch=protocol.boost_epoch if spec.boost else None,
                  data=data_fingerprint, data_source=data_source,
                  contexts=[str(c) for c in contexts or [mx.cpu()]], kvstore=kvstore,
                  train_size=len(prepared.train_y), test_size=len(prepared.test_y),
                  versions=versions(), command=command)
    if kvstore.startswith('dist') or kvstore == 'horovod':
        header['workers'] = workers
    return header


class RunState(NamedTuple):
    """Where a run stands: ``kind`` is 'new', 'finished' (``records`` from its log) or 'resume'
    (from ``checkpoint``, after ``epoch``); ``note`` says so, for the user."""
    kind: str
    records: list = []
    checkpoint: Optional[Path] = None
    epoch: int = 0
    note: str = ''


#: Why a dist_* run cannot resume (said where a resume is asked for).
_NO_CHECKPOINT = ('(a dist_* job keeps none: MXNet cannot save the optimizer states that live '
                  'on its servers, so it cannot resume)')


def run_state(header, log_path, checkpoint_dir, distributed=False):
    """What ``train_run`` will do with the run of ``header``, from its log and checkpoints,
    writing nothing. Raises CheckpointError, naming the file and what to do, when they belong
    to another configuration, the newest checkpoint is damaged (a file missing or unreadable),
    or the log is damaged with no checkpoint to rebuild it from. ``distributed``: a ``dist_*``
    run, which has no checkpoints.
    Called for every run before any is trained, and by train_run itself."""
    epochs = header['protocol']['epochs']
    latest = None if distributed else Checkpoints(checkpoint_dir).latest()
    if latest is not None:
        try:
            state = Checkpoints.read(latest, lambda state: _check_config(
                state['config'], header, 'checkpoint %s was made' % latest, log_path,
                checkpoint_dir))
        except CheckpointDamaged as e:
            # Checkpoints are renamed into place whole: this is damage from outside, and
            # silently training from the start would overwrite the epochs logged so far.
            raise CheckpointError(
                'checkpoint %s is damaged: %s; restore the checkpoint folder from a copy to '
                'resume, or move %s%s away to rerun this run from the start'
                % (latest, e, checkpoint_dir,
                           '' if log_path is None else ' and the log %s' % log_path)) from e
        note = ('finished earlier (%s): skipped' % latest if state['epoch'] >= epochs else
                'resuming from %s: continuing at epoch %d of %d' % (latest, state['epoch'] + 1,
                                                                     epochs))
        return RunState('resume', state['records'], latest, state['epoch'], note)
    if log_path is None or not Path(log_path).is_file():
        return RunState('new')
    try:
        logged_header, logged = read_log(log_path)
    except LogError as e:
        raise CheckpointError('%s; there is no checkpoint %s to rebuild it from: move the '
                              'log away (or delete it) to rerun this run from the start'
                              % (e, _NO_CHECKPOINT if distributed else 'in %s' % checkpoint_dir)
                              ) from e
    _check_config(_config_of(logged_header), header, 'log %s was written' % log_path,
                  log_path, None if distributed else checkpoint_dir)
    if len(logged) == epochs:      # finished, and its checkpoints are gone
        return RunState('finished', logged, note='finished earlier (%d epochs in %s): skipped'
                        % (epochs, log_path))
    if distributed:
        raise CheckpointError(
            '%s has %d of %d epochs and there is no checkpoint %s; training again would '
            'overwrite it: move the log away to train this run from the start'
            % (log_path, len(logged), epochs, _NO_CHECKPOINT))
    raise CheckpointError(
        '%s has %d of %d epochs but no checkpoint in %s to resume from; training again would '
        'overwrite it: restore the checkpoint (a run committed unfinished has it under '
        'checkpoints/), or move the log away to train this run from the start'
        % (log_path, len(logged), epochs, checkpoint_dir))



def check_run(header, log_path, checkpoint_dir):
    """:func:`run_state` as the check before any training makes it, writing nothing: the
    RunState, or None if another process is training the run (it is checked when its turn
    comes, by train_run under the run's lock). It reads under the lock, so that no checkpoint
    is read while another process replaces it. The ranks of a ``dist_*`` or ``horovod`` job
    read without it; their rank 0 locks the run in train_run."""
    kvstore = header['kvstore']
    if kvstore.startswith('dist') or kvstore == 'horovod':
        return run_state(header, log_path, checkpoint_dir, kvstore.startswith('dist'))
    try:
        with run_lock([log_path, checkpoint_dir], header['run'], create=False):
            return run_state(header, log_path, checkpoint_dir)
    except RunBusy:
        return None


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


class _Tally:
    """Summed loss and correct predictions, kept as NDArrays; each batch waits only for the
    sums of the batch before it."""

    def __init__(self):
        self.loss, self.correct, self.count = mx.nd.zeros(1), mx.nd.zeros(1), 0

    def add(self, outs, ys, losses):
        # MXNet's engine is asynchronous and MXNet's own optimizers never wait: without this,
        # the loop queued a whole epoch in seconds (all its inputs in memory at once) and the
        # progress bar and lines counted batches queued, not trained. One batch stays in flight.
        self.loss.wait_to_read()
        self.correct.wait_to_read()
        for out, y, loss in zip(outs, ys, losses):
            self.loss += loss.sum().as_in_context(mx.cpu())
            self.correct += (out.argmax(axis=1) == y.astype('float32')).sum().as_in_context(
                mx.cpu())
            self.count += y.shape[0]

    def means(self):
        return self.loss.asscalar() / self.count, self.correct.asscalar() / self.count


class _Progress:
    """Progress within an epoch: a tqdm bar (``bar``, for a terminal), or else, every
    ``every`` seconds, one line through ``echo`` with the batch, the running loss and the
    images per second (for output going to a file), or nothing."""

    def __init__(self, batches, total, desc, tally, bar=False, every=None, echo=None):
        self.total, self.desc, self.tally = total, desc, tally
        self.every = every if echo is not None and not bar else None
        self.echo = echo
        if bar:
            from tqdm import tqdm
            batches = tqdm(batches, total=total, leave=False, file=sys.stderr, desc=desc)
        self.batches = batches

    def __iter__(self):
        start = last = time.monotonic()
        for done, batch in enumerate(self.batches, start=1):
            yield batch
            if self.every is None or done >= self.total:
                continue
            now = time.monotonic()
            if now - last >= self.every:
                last = now
                loss, _ = self.tally.means()          # waits for the engine: only this often
                self.echo('%s: batch %d/%d, running loss %.5f, %.0f images/s'
                          % (self.desc, done, self.total, loss,
                             self.tally.count / max(now - start, 1e-9)))


def _evaluate(net, batches, contexts, loss_fn):
    tally = _Tally()
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

    The run's log and checkpoint folder are locked for this process (:func:`run_lock`) from
    before its state is read until it returns: if another process is training the run, this
    raises RunBusy (after 3 s), or with ``wait`` waits until the other is done and then goes on
    from what it left (skipped if finished, resumed if stopped). A ``dist_*`` or ``horovod``
    job cannot wait (its other ranks would train on): its rank 0 raises CheckpointError.

    With a ``dist_*`` kvstore (a worker of a job started by ``python -m namsg_dist launch``) the
    optimizer runs on the servers, each worker trains on its shard of every epoch's shuffled
    order (whole batches only), only rank 0 writes the log and echoes, and there are no
    checkpoints (MXNet cannot save optimizer states that live on servers). With ``horovod``
    (every rank a process of ``horovodrun``) the gradients are averaged by allreduce and every
    rank updates alike: each trains on its shard, rank 0 logs and checkpoints, and every rank
    resumes from rank 0's checkpoint.
    """
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
            tally = _Tally()
            batches = prepared.train_batches(protocol.batch_size, rng, rank, workers,
                                             whole_batches=distributed)
            steps = -(-len(prepared.train_y) // (protocol.batch_size * workers))
            for x, y in _Progress(batches, steps, '%s epoch %d' % (header['run'], epoch), tally,
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
                    config=_config_of(header), epoch=epoch, iteration=iteration, records=records,
                    policy=policy.state_dict() if policy is not None else None))
            if log_path is not None:
                write_log(log_path, header, records)
            if echo is not None:
                echo(format_record(header['run'], records[-1]))
        if first_epoch > protocol.epochs and log_path is not None and \
                not _logged(log_path, records):
            write_log(log_path, header, records)     # finished earlier, its log lost: rebuild it
    return records


def logged_lr(optimizer, iteration):
    """The step size in force after ``iteration`` steps. On a parameter-server worker the
    optimizer never updates (the servers do), so its own count stays at 0 and
    ``learning_rate`` would show a schedule's first value for ever: ask the schedule."""
    if optimizer.lr_scheduler is not None and optimizer.num_update < iteration:
        return optimizer.lr_scheduler(iteration)
    return optimizer.learning_rate


def format_record(run, r):
    """One line for an epoch record."""
    mu = '' if r['mu'] is None else ' mu %.3g' % r['mu']
    boost = '' if not r['boost'] else ' (boost: lr x%.3f, mu %.3g -> %.3g)' % (
        r['boost']['factor'], r['boost']['old_mu'], r['boost']['new_mu'])
    return ('%s epoch %d: train loss %.5f acc %.4f | val loss %.4f acc %.4f | lr %.3g%s | '
            '%.1f s%s' % (run, r['epoch'], r['train_loss'], r['train_acc'], r['val_loss'],
                          r['val_acc'], r['lr'], mu, r['seconds'], boost))


def _logged(log_path, records):
    """Whether the log at ``log_path`` already holds ``records`` (then it is left as it is, with
    the command that trained the run in its header)."""
    try:
        return read_log(log_path)[1] == json.loads(json.dumps(records))
    except (OSError, LogError):
        return False


def _config_of(header):
    """What must match for a checkpoint to be resumed: everything but what describes the
    machine rather than the run (versions, command line, data path)."""
    return {k: v for k, v in header.items() if k not in ('versions', 'command', 'data_source')}


def _describe_data(data):
    """A header's ``data`` entry in words (older logs hold a string)."""
    if not isinstance(data, dict):
        return repr(data)
    return '%s training / %s validation images, digest %s' % (
        format(data.get('train'), ','), format(data.get('test'), ','), data.get('sha256'))


def _check_config(saved, header, what, log_path, checkpoint_dir):
    """Raise CheckpointError unless ``saved`` (a config read back from JSON) is this run's,
    saying what differs and how to keep both: the run's log and checkpoints go together, so
    the advice names both (removing one of them only meets the other's refusal)."""
    now = json.loads(json.dumps(_config_of(header)))
    if saved == now:
        return
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    differences = []
    for k in keys:
        if k == 'data':
            differences.append('other data: %s then; %s now, from %s (give the --data-dir it '
                               'was trained on to resume it)'
                               % (_describe_data(saved.get(k)), _describe_data(now.get(k)),
                                  header.get('data_source', 'unknown source')))
        else:
            differences.append('%s: %r then, %r now' % (k, saved.get(k), now.get(k)))
    kept = [(flag, files) for flag, files, path in [
        ('--log-dir', 'the log %s' % log_path, log_path),
        ('--checkpoint-dir', 'the checkpoints in %s' % checkpoint_dir, checkpoint_dir)]
        if path is not None]
    raise CheckpointError(
        '%s by another configuration of this run (%s). Its files are kept: to train this '
        'configuration, choose another %s, or move %s away'
        % (what, '; '.join(differences), ' and '.join(flag for flag, _ in kept),
           ' and '.join(files for _, files in kept)))
