"""The shared training loop: logs, checkpoints, exact resume, boost and step-size drop,
CIFAR-10 augmentation, the command line."""

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from namsg.experiments import cli, train
from namsg.experiments.hparams import PROTOCOLS


def _tiny_mnist(n_train=64, n_test=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n_train + n_test, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, n_train + n_test).astype(np.int32)
    x[np.arange(len(y)), 0, y, y] += 3.0      # a learnable signal
    return train.Prepared(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


# ARSGB with its boost at epoch 2 and a step-size drop at iteration 5 (of 4 per epoch).
PROTOCOL = PROTOCOLS['mnist_logreg']._replace(epochs=3, batch_size=16, boost_epoch=2,
                                              lr_drop_iteration=5)


def _strip_times(records):
    return [{k: v for k, v in r.items() if k != 'seconds'} for r in records]


def test_log_has_header_and_one_line_per_epoch(tmp_path):
    records = train.train_run(PROTOCOL, 'ARSGB', 0, _tiny_mnist(), tmp_path / 'run.jsonl',
                              tmp_path / 'ck', command='pytest', data_source='tiny')
    header, logged = train.read_log(tmp_path / 'run.jsonl')
    assert logged == records and len(records) == 3
    assert header['method'] == 'ARSGB' and header['optimizer'] == 'arsg'
    assert header['optimizer_params']['mu'] == 0.05 and header['boost_epoch'] == 2
    assert set(header['versions']) == {'namsg', 'mxnet', 'numpy', 'python'}
    for key in ('epoch', 'iteration', 'train_loss', 'train_acc', 'val_loss', 'val_acc', 'lr',
                'mu', 'seconds'):
        assert key in records[0]
    assert [r['iteration'] for r in records] == [4, 8, 12]
    assert records[0]['boost'] is None and records[1]['boost']['epoch'] == 2
    assert [r['mu'] for r in records] == [0.05, 0.1, 0.1]
    factor = records[1]['boost']['factor']
    assert records[1]['lr'] == pytest.approx(0.1 * factor / 10)     # boosted, then dropped
    assert records[0]['lr'] == pytest.approx(0.1)


@pytest.mark.parametrize('method', ['ARSGB', 'RANGER', 'SGD'])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, method):
    data = _tiny_mnist()
    expected = train.train_run(PROTOCOL, method, 3, data, tmp_path / 'a.jsonl', tmp_path / 'a')

    original = train.Prepared.train_batches
    calls = {'n': 0}

    def interrupted(self, batch_size, rng, *shard, **kwargs):
        calls['n'] += 1
        for i, batch in enumerate(original(self, batch_size, rng, *shard, **kwargs)):
            if calls['n'] == 2 and i == 2:       # in the middle of epoch 2
                raise KeyboardInterrupt
            yield batch
    monkeypatch.setattr(train.Prepared, 'train_batches', interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.train_run(PROTOCOL, method, 3, data, tmp_path / 'b.jsonl', tmp_path / 'b')
    _, logged = train.read_log(tmp_path / 'b.jsonl')
    assert len(logged) == 1                                  # the log stops at epoch 1
    assert [p.name for p in (tmp_path / 'b').iterdir()] == ['epoch-0001']
    monkeypatch.setattr(train.Prepared, 'train_batches', original)

    resumed = train.train_run(PROTOCOL, method, 3, data, tmp_path / 'b.jsonl', tmp_path / 'b')
    assert _strip_times(resumed) == _strip_times(expected)
    again = train.train_run(PROTOCOL, method, 3, data, tmp_path / 'b.jsonl', tmp_path / 'b')
    assert again == resumed                                  # a finished run is not rerun


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    data = _tiny_mnist()
    train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 0, data, tmp_path / 'r.jsonl',
                    tmp_path / 'ck')
    before = (tmp_path / 'r.jsonl').read_text()
    with pytest.raises(train.CheckpointError, match='another configuration'):
        train.train_run(PROTOCOL._replace(epochs=1, batch_size=8), 'ADAM', 0, data,
                        tmp_path / 'r.jsonl', tmp_path / 'ck')
    assert (tmp_path / 'r.jsonl').read_text() == before      # nothing written is lost


def test_random_crop_flip_takes_windows_of_the_image_or_its_mirror():
    rng = np.random.default_rng(0)
    x = rng.random((20, 3, 32, 32)).astype(np.float32)
    out = train.random_crop_flip(x, np.random.default_rng(1))
    assert out.shape == (20, 3, 28, 28)
    for image, crop in zip(x, out):
        found = False
        for candidate in (image, image[:, :, ::-1]):
            for top in range(5):
                for left in range(5):
                    if np.array_equal(candidate[:, top:top + 28, left:left + 28], crop):
                        found = True
        assert found


def test_cifar10_preparation_normalises_with_training_statistics():
    from namsg.experiments.data import Dataset, Split
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (10, 32, 32, 3)).astype(np.uint8)
    test_images = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    prepared = train.prepare_cifar10(Dataset(Split(train_images, np.zeros(10, np.int32)),
                                             Split(test_images, np.zeros(4, np.int32)), 'x'))
    assert prepared.train_x.shape == (10, 3, 32, 32) and prepared.test_x.shape == (4, 3, 32, 32)
    assert abs(prepared.train_x.mean()) < 1e-5 and abs(prepared.train_x.std() - 1) < 1e-5
    mean, std = train_images.mean(), train_images.std()
    np.testing.assert_allclose(prepared.test_x, (test_images.transpose(0, 3, 1, 2) - mean) / std,
                               rtol=1e-4, atol=1e-4)


def test_command_line_runs_on_the_embedded_sample_outside_logs(tmp_path, capsys, monkeypatch,
                                                              caplog):
    monkeypatch.delenv('NAMSG_DATA_DIR', raising=False)
    monkeypatch.chdir(tmp_path)
    cli.main('mnist', ['--settings', 'mnist_logreg', '--methods', 'arsg', '--scale', '0.1',
                       '--no-progress'])
    out = capsys.readouterr()
    assert 'embedded 5,000-image MNIST sample' in caplog.text     # a warning logged
    assert 'mnist_logreg/ARSG/seed0 epoch 2:' in out.out
    assert not (tmp_path / 'logs').exists()          # logs/ is for runs on real data
    header, records = train.read_log(tmp_path / 'runs' / 'mnist-sample' / 'mnist_logreg' /
                                     'ARSG' / 'seed0.jsonl')
    assert header['protocol']['scale'] == 0.1 and len(records) == 2
    assert not (tmp_path / 'runs' / 'mnist-sample' / 'mnist_logreg' / 'ARSG' /
                'seed1.jsonl').exists()
    assert (tmp_path / 'runs' / 'mnist-sample' / 'mnist_logreg.png').is_file()


@pytest.mark.parametrize('argv,message', [(['--methods', 'LAMB'], '--methods: unknown'),
                                          (['--settings', 'cifar10_fine'], '--settings: unknown'),
                                          (['--scale', '2'], 'scale'),
                                          (['--seeds', 'a'], 'seeds'),
                                          (['--data-dir', '{empty}'], 'does not exist')])
def test_command_line_errors_are_clear(argv, message, tmp_path, monkeypatch):
    monkeypatch.setattr('namsg.experiments.data._download_mnist', lambda *a, **k: False)
    argv = [a.replace('{empty}', str(tmp_path / 'empty')) for a in argv]
    with pytest.raises(SystemExit, match=message):
        cli.main('mnist', argv + ['--log-dir', str(tmp_path), '--checkpoint-dir',
                                  str(tmp_path)])


def test_existing_log_of_another_configuration_is_never_overwritten(tmp_path):
    data = _tiny_mnist()
    log = tmp_path / 'r.jsonl'
    train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 0, data, log, tmp_path / 'ck1')
    before = log.read_text()
    with pytest.raises(train.CheckpointError, match='another configuration'):
        train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 1, data, log, tmp_path / 'ck2')
    assert log.read_text() == before


def test_finished_log_without_checkpoints_is_not_rerun(tmp_path, monkeypatch):
    data = _tiny_mnist()
    log = tmp_path / 'r.jsonl'
    first = train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 0, data, log, tmp_path / 'a')
    monkeypatch.setattr(train.Prepared, 'train_batches', lambda *a: pytest.fail('rerun'))
    again = train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 0, data, log, tmp_path / 'b')
    assert again == first


def test_workers_of_a_job_get_disjoint_equal_shards_of_whole_batches():
    data = _tiny_mnist(n_train=70)
    shards = [list(data.train_batches(16, np.random.default_rng([1, 2]), rank, 2))
              for rank in range(2)]
    assert [len(s) for s in shards] == [2, 2]
    assert all(len(y) == 16 for s in shards for _, y in s)
    rows = [np.concatenate([x for x, _ in s]).reshape(32, -1) for s in shards]
    assert not any((a == b).all() for a in rows[0] for b in rows[1])


def test_logged_step_size_follows_the_schedule_on_a_worker_that_never_updates():
    """On a parameter-server worker the optimizer's own count stays 0: the log must still show
    the step-size drop the servers apply."""
    import mxnet as mx
    opt = mx.optimizer.create('arsg', learning_rate=0.1, lr_scheduler=mx.lr_scheduler.
                              MultiFactorScheduler(step=[5], factor=0.1, base_lr=0.1))
    assert opt.learning_rate == pytest.approx(0.1)      # what the log showed before
    assert train.logged_lr(opt, 4) == pytest.approx(0.1)
    assert train.logged_lr(opt, 6) == pytest.approx(0.01)


def test_skipping_a_finished_run_leaves_its_log_as_the_training_wrote_it(tmp_path):
    """The skip rewrote the log's header with the command that skipped the run."""
    args = (PROTOCOL, 'ARSG', 0, _tiny_mnist(), tmp_path / 'run.jsonl', tmp_path / 'ck')
    train.train_run(*args, command='the command that trained it')
    before = (tmp_path / 'run.jsonl').read_bytes()
    train.train_run(*args, command='a later command')
    assert (tmp_path / 'run.jsonl').read_bytes() == before
    records = train.read_log(tmp_path / 'run.jsonl')[1]
    (tmp_path / 'run.jsonl').unlink()            # a lost log is rebuilt from the checkpoint
    train.train_run(*args, command='a later command')
    assert train.read_log(tmp_path / 'run.jsonl')[1] == records


def test_an_unfinished_log_without_its_checkpoint_is_never_overwritten(tmp_path):
    """Training it again from epoch 1 overwrote the epochs logged so far (e.g. a run committed
    unfinished, cloned without its checkpoint)."""
    args = (PROTOCOL, 'ARSG', 0, _tiny_mnist(), tmp_path / 'run.jsonl', tmp_path / 'ck')
    train.train_run(*args)
    header, records = train.read_log(tmp_path / 'run.jsonl')
    train.write_log(tmp_path / 'run.jsonl', header, records[:2])
    import shutil
    shutil.rmtree(tmp_path / 'ck')
    before = (tmp_path / 'run.jsonl').read_bytes()
    with pytest.raises(train.CheckpointError, match='has 2 of 3 epochs but no checkpoint'):
        train.train_run(*args)
    assert (tmp_path / 'run.jsonl').read_bytes() == before


def test_logs_are_readable_as_the_umask_allows(tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        train.write_atomic(tmp_path / 'a.jsonl', '{}\n')
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / 'a.jsonl').stat().st_mode) == 0o644


def _cut_short(path):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


@pytest.mark.parametrize('name,damage', [
    ('trainer.states', _cut_short), ('net.params', _cut_short), ('state.json', _cut_short),
    ('state.json', lambda path: path.write_text('')),
    ('state.json', lambda path: path.write_text('{}')), ('net.params', lambda path: path.unlink())])
def test_a_damaged_checkpoint_is_named_before_any_training_and_nothing_is_written(
        tmp_path, monkeypatch, name, damage):
    """A checkpoint file cut short ended, after "resuming from ...", in an UnpicklingError,
    MXNetError (Invalid NDArray file format) or JSONDecodeError traceback."""
    data = _tiny_mnist()
    train.train_run(PROTOCOL._replace(epochs=1), 'ARSGB', 0, data, tmp_path / 'r.jsonl',
                    tmp_path / 'ck')
    checkpoint = tmp_path / 'ck' / 'epoch-0001'
    state = json.loads((checkpoint / 'state.json').read_text())
    state['config']['protocol']['epochs'] = 3       # as if interrupted after epoch 1 of 3
    (checkpoint / 'state.json').write_text(json.dumps(state))
    damage(checkpoint / name)
    before = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
    monkeypatch.setattr(train.Prepared, 'train_batches', lambda *a, **k: pytest.fail('trained'))
    lines = []
    with pytest.raises(train.CheckpointError) as error:
        train.train_run(PROTOCOL, 'ARSGB', 0, data, tmp_path / 'r.jsonl', tmp_path / 'ck',
                        echo=lines.append)
    message = str(error.value)
    assert re.match(r'checkpoint %s is damaged: %s (is missing|cannot be read \(\w+: .+\));'
                    % (checkpoint, checkpoint / name), message), message
    assert message.endswith('restore the checkpoint folder from a copy to resume, or move %s '
                            'and the log %s away to rerun this run from the start'
                            % (tmp_path / 'ck', tmp_path / 'r.jsonl')), message
    assert lines == []                                      # no "resuming from ..."
    assert {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()} == before


def test_an_unfinished_distributed_log_says_there_is_no_checkpoint_to_restore(tmp_path):
    """A dist_* run keeps no checkpoint, yet the advice was to restore it."""
    data = _tiny_mnist()
    header = train.run_header(PROTOCOL, 'ARSG', 0, data, kvstore='dist_sync', workers=2)
    train.write_log(tmp_path / 'r.jsonl', header, [dict(type='epoch', epoch=1)])
    with pytest.raises(train.CheckpointError) as error:
        train.run_state(header, tmp_path / 'r.jsonl', tmp_path / 'ck', distributed=True)
    message = str(error.value)
    assert 'has 1 of 3 epochs and there is no checkpoint (a dist_* job keeps none' in message
    assert 'restore' not in message and message.endswith('move the log away to train this run '
                                                         'from the start')
    (tmp_path / 'r.jsonl').write_text('{"type": "hea')
    with pytest.raises(train.CheckpointError, match=r'no checkpoint \(a dist_\* job keeps none.*'
                                                    r'move the log away'):
        train.run_state(header, tmp_path / 'r.jsonl', tmp_path / 'ck', distributed=True)


# --- one process per run --------------------------------------------------------------------

# Another process holding a run's lock as train_run does: an exclusive flock on ``.NAME.lock``
# beside the file, naming itself; it lets go (removing the file first) when argv[3] exists.
_HOLDER = r'''
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b'pid %d on testhost' % os.getpid())
open(sys.argv[2], 'w').close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.02)
os.unlink(sys.argv[1])
'''


class Holder:
    """A process holding the run lock of ``path`` (a log or a checkpoint folder) until
    ``release()``; ``kill()`` ends it by SIGKILL, leaving its lock file behind."""

    def __init__(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_file = path.parent / ('.%s.lock' % path.name)
        self._ready, self._go = path.parent / '.ready', path.parent / '.go'
        self.process = subprocess.Popen([sys.executable, '-c', _HOLDER, str(self.lock_file),
                                         str(self._ready), str(self._go)])
        deadline = time.time() + 60
        while not self._ready.exists():
            assert self.process.poll() is None and time.time() < deadline, 'holder failed'
            time.sleep(0.02)
        self._ready.unlink()

    def release(self):
        self._go.touch()
        assert self.process.wait(60) == 0
        self._go.unlink()

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.kill()


def _lock_files(root):
    return sorted(p for p in Path(root).rglob('.*.lock'))


@pytest.mark.parametrize('held', ['log', 'checkpoints'])
def test_a_run_another_process_trains_is_refused_writing_nothing(tmp_path, held):
    """Two processes trained one run at once: each rewrote the other's log and checkpoints
    (and could fail as one renamed its checkpoint over the other's)."""
    log, checkpoints = tmp_path / 'logs' / 'run.jsonl', tmp_path / 'ck' / 'run'
    with Holder(log if held == 'log' else checkpoints) as holder:
        with pytest.raises(train.RunBusy) as busy:
            train.train_run(PROTOCOL, 'ARSG', 0, _tiny_mnist(), log, checkpoints)
        assert str(busy.value) == (
            'mnist_logreg/ARSG/seed0 is being trained by another process, pid %d on testhost '
            '(it holds the lock on %s)' % (holder.process.pid, log if held == 'log' else
                                           checkpoints))
        assert not log.exists() and not checkpoints.exists()
        assert _lock_files(tmp_path) == [holder.lock_file]      # the other's, untouched
        header = train.run_header(PROTOCOL, 'ARSG', 0, _tiny_mnist())
        assert train.check_run(header, log, checkpoints) is None


def test_a_lock_held_only_for_a_check_is_waited_for_not_taken_for_a_run_in_training(tmp_path):
    """Two processes started together walk the same runs in step, each holding a run's lock
    for the milliseconds its check (or its skip as finished) takes: the one that came second
    put finished runs off as "being trained by another process"."""
    log, checkpoints = tmp_path / 'run.jsonl', tmp_path / 'ck'
    header = train.run_header(PROTOCOL, 'SGD', 0, _tiny_mnist())
    with Holder(log) as holder:
        threading.Timer(0.5, holder.release).start()
        assert train.check_run(header, log, checkpoints) is not None
    with Holder(checkpoints) as holder:
        threading.Timer(0.5, holder.release).start()
        with train.run_lock([log, checkpoints], 'mnist_logreg/SGD/seed0'):
            assert _lock_files(tmp_path) == [tmp_path / '.ck.lock', tmp_path / '.run.jsonl.lock']
    assert _lock_files(tmp_path) == []


def test_a_lock_left_by_a_killed_process_locks_nothing(tmp_path):
    log, checkpoints = tmp_path / 'run.jsonl', tmp_path / 'ck'
    with Holder(log) as holder:
        holder.kill()                       # SIGKILL: its lock file stays behind
        assert holder.lock_file.exists()
        records = train.train_run(PROTOCOL, 'ARSG', 0, _tiny_mnist(), log, checkpoints)
    assert len(records) == 3 and _lock_files(tmp_path) == []


def test_waiting_for_the_other_process_goes_on_from_what_it_left(tmp_path):
    """With wait, train_run waits for the other process and then resumes the run where that
    one stopped (here it stopped after epoch 1), not from the start."""
    log, checkpoints = tmp_path / 'run.jsonl', tmp_path / 'ck'
    data = _tiny_mnist()
    one = train.train_run(PROTOCOL._replace(epochs=1), 'SGD', 0, data, log, checkpoints)
    state = json.loads((checkpoints / 'epoch-0001' / 'state.json').read_text())
    state['config']['protocol']['epochs'] = 3        # as if the other stopped after epoch 1
    (checkpoints / 'epoch-0001' / 'state.json').write_text(json.dumps(state))
    lines = []
    with Holder(log) as holder:
        threading.Timer(1.0, holder.release).start()
        records = train.train_run(PROTOCOL, 'SGD', 0, data, log, checkpoints, wait=True,
                                  echo=lines.append)
    assert lines[0].startswith('mnist_logreg/SGD/seed0: resuming from %s'
                               % (checkpoints / 'epoch-0001'))
    assert records[0] == one[0] and len(records) == 3 and _lock_files(tmp_path) == []


def test_train_all_puts_off_busy_runs_and_then_waits_for_them():
    calls, lines = [], []

    def fake(run, wait):
        calls.append((run, wait))
        if run in ('b', 'd') and not wait:
            raise train.RunBusy(run, Path('/x/%s.jsonl' % run), 'pid 7 on h')
        return run.upper()
    assert train.train_all(['a', 'b', 'c', 'd'], fake, lines.append) == ['A', 'B', 'C', 'D']
    assert calls == [('a', False), ('b', False), ('c', False), ('d', False), ('b', True),
                     ('d', True)]
    assert lines == [
        'b is being trained by another process, pid 7 on h (it holds the lock on /x/b.jsonl): '
        'put off until the other runs are done',
        'd is being trained by another process, pid 7 on h (it holds the lock on /x/d.jsonl): '
        'put off until the other runs are done',
        'b: waiting for pid 7 on h to finish or stop it',
        'd: waiting for pid 7 on h to finish or stop it']


def test_a_distributed_job_ends_when_another_process_trains_its_run(tmp_path, monkeypatch):
    """Its rank 0 cannot wait, as its other ranks would train on: the job ends, saying why."""
    import mxnet as mx

    class Store:       # rank 0 of two workers, the optimizer on the servers
        rank, num_workers, type = 0, 2, 'dist_sync'

        def is_capable(self, capability):
            return capability == mx.kv.KVStoreBase.OPTIMIZER
    monkeypatch.setattr(train, 'create_kvstore', lambda kvstore: Store())
    log = tmp_path / 'run.jsonl'
    with Holder(log) as holder:
        with pytest.raises(train.CheckpointError) as error:
            train.train_run(PROTOCOL, 'ARSG', 0, _tiny_mnist(), log, tmp_path / 'ck',
                            kvstore='dist_sync', wait=True)
        assert str(error.value).startswith(
            'mnist_logreg/ARSG/seed0 is being trained by another process, pid %d on testhost'
            % holder.process.pid)
        assert str(error.value).endswith('a dist_sync job cannot wait for it: let that '
                                         'process finish or stop it, then start this job again')
    assert not log.exists()
