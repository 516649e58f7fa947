"""One process per run: a run another process trains is refused or waited for, a lock held
only for a check is waited for, a lock left by a killed process locks nothing."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from namsg.experiments import locks, resume, runs, train
from test_train import PROTOCOL, _tiny_mnist


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
        # Released (by a timer thread): it unlinks its lock before it exits, so the test's body
        # can end while it is still running; killing it then failed release()'s assertion in
        # that thread (PytestUnhandledThreadExceptionWarning in a CI run).
        if self._go.exists():
            self.process.wait(60)
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
        with pytest.raises(locks.RunBusy) as busy:
            train.train_run(PROTOCOL, 'ARSG', 0, _tiny_mnist(), log, checkpoints)
        assert str(busy.value) == (
            'mnist_logreg/ARSG/seed0 is being trained by another process, pid %d on testhost '
            '(it holds the lock on %s)' % (holder.process.pid, log if held == 'log' else
                                           checkpoints))
        assert not log.exists() and not checkpoints.exists()
        assert _lock_files(tmp_path) == [holder.lock_file]      # the other's, untouched
        header = runs.run_header(PROTOCOL, 'ARSG', 0, _tiny_mnist())
        assert resume.check_run(header, log, checkpoints) is None


def test_a_lock_held_only_for_a_check_is_waited_for_not_taken_for_a_run_in_training(tmp_path):
    """Two processes started together walk the same runs in step, each holding a run's lock
    for the milliseconds its check (or its skip as finished) takes: the one that came second
    put finished runs off as "being trained by another process"."""
    log, checkpoints = tmp_path / 'run.jsonl', tmp_path / 'ck'
    header = runs.run_header(PROTOCOL, 'SGD', 0, _tiny_mnist())
    with Holder(log) as holder:
        threading.Timer(0.5, holder.release).start()
        assert resume.check_run(header, log, checkpoints) is not None
    with Holder(checkpoints) as holder:
        threading.Timer(0.5, holder.release).start()
        with locks.run_lock([log, checkpoints], 'mnist_logreg/SGD/seed0'):
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


def test_ctrl_c_while_waiting_for_the_other_process_says_who_holds_the_run(tmp_path):
    """Ctrl-C in the wait was a bare KeyboardInterrupt: the caller could not tell a process
    that waited (and trained nothing) from one stopped in an epoch of its own."""
    import os
    log, checkpoints = tmp_path / 'run.jsonl', tmp_path / 'ck'
    expected = locks.WaitInterrupted
    with Holder(log) as holder:
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(expected) as stopped:
            train.train_run(PROTOCOL, 'SGD', 0, _tiny_mnist(), log, checkpoints, wait=True)
        assert (stopped.value.run, stopped.value.holder) == (
            'mnist_logreg/SGD/seed0', 'pid %d on testhost' % holder.process.pid)
        assert type(stopped.value.interrupt) is KeyboardInterrupt
        assert isinstance(stopped.value, KeyboardInterrupt)      # stops as Ctrl-C does
        assert _lock_files(tmp_path) == [holder.lock_file]       # the other's, untouched
    assert not log.exists() and not checkpoints.exists()


def test_a_distributed_job_ends_when_another_process_trains_its_run(tmp_path, monkeypatch):
    """Its rank 0 cannot wait, as its other ranks would train on: the job ends, saying why."""
    class Store:       # rank 0 of two workers, the optimizer on the servers
        rank, num_workers, type = 0, 2, 'dist_sync'

        def is_capable(self, capability):
            return capability == 'optimizer'      # KVStoreBase.OPTIMIZER from MXNet 1.7
    monkeypatch.setattr(train, 'create_kvstore', lambda kvstore: Store())
    log = tmp_path / 'run.jsonl'
    with Holder(log) as holder:
        with pytest.raises(runs.CheckpointError) as error:
            train.train_run(PROTOCOL, 'ARSG', 0, _tiny_mnist(), log, tmp_path / 'ck',
                            kvstore='dist_sync', wait=True)
        assert str(error.value).startswith(
            'mnist_logreg/ARSG/seed0 is being trained by another process, pid %d on testhost'
            % holder.process.pid)
        assert str(error.value).endswith('a dist_sync job cannot wait for it: let that '
                                         'process finish or stop it, then start this job again')
    assert not log.exists()


def test_a_run_stopped_before_its_first_epoch_leaves_no_folders_behind(tmp_path):
    """A CIFAR-10 run interrupted in its first epoch left runs/cifar10/<setting>/<method>/ and
    runs/cifar10/checkpoints/<setting>/<method>/, empty."""
    (tmp_path / 'there').mkdir()                  # empty, but not made by the run: kept
    log = tmp_path / 'runs' / 'cifar10' / 'cifar10_fine' / 'SGD' / 'seed0.jsonl'
    checkpoints = tmp_path / 'runs' / 'cifar10' / 'checkpoints' / 'cifar10_fine' / 'SGD' / 'seed0'
    with pytest.raises(KeyboardInterrupt):
        with locks.run_lock([log, checkpoints, tmp_path / 'there' / 'x'], 'cifar10_fine/SGD/seed0'):
            assert log.parent.is_dir() and checkpoints.parent.is_dir()
            checkpoints.mkdir()                   # as a checkpoint is begun
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ['there']
    assert list((tmp_path / 'there').iterdir()) == []

    with locks.run_lock([log, checkpoints], 'cifar10_fine/SGD/seed0'):
        log.write_text('{}\n')                    # what the run wrote stays, with its folder
    assert log.read_text() == '{}\n'
    assert not (tmp_path / 'runs' / 'cifar10' / 'checkpoints').exists()


def _run_paths(log_dir, method):
    return (log_dir / 'cifar10_fine' / method / 'seed0.jsonl',
            log_dir / 'checkpoints' / 'cifar10_fine' / method / 'seed0')


@pytest.mark.parametrize('first_out', ['the first in', 'the last in'])
def test_runs_of_several_processes_stopped_before_their_first_epoch_leave_no_folders(
        tmp_path, first_out):
    """Two processes with other runs in one new log dir, both stopped before their first epoch,
    left <log dir>/cifar10_fine/ and <log dir>/checkpoints/cifar10_fine/ empty: each removed only
    the folders it had made, and the first one out could not remove those the other used."""
    import contextlib
    (tmp_path / 'there').mkdir()                  # empty, but not made by the runs: kept
    log_dir = tmp_path / 'there' / 'runs'
    sgd, arsg = _run_paths(log_dir, 'SGD'), _run_paths(log_dir, 'ARSG')
    first, second = contextlib.ExitStack(), contextlib.ExitStack()
    first.enter_context(locks.run_lock(sgd, 'cifar10_fine/SGD/seed0'))
    second.enter_context(locks.run_lock(arsg, 'cifar10_fine/ARSG/seed0'))
    sgd[1].mkdir()                                # as a checkpoint is begun
    out, last, still = ((first, second, arsg) if first_out == 'the first in' else
                        (second, first, sgd))
    out.close()
    assert still[0].parent.is_dir() and still[1].parent.is_dir()   # the other's, in use
    last.close()
    assert list((tmp_path / 'there').iterdir()) == []


def test_folders_that_hold_a_run_s_files_are_kept_unmarked(tmp_path):
    """The mark that lets any process remove a folder it leaves empty goes once a run's files
    are written below it, whichever process made it."""
    import contextlib
    log_dir = tmp_path / 'runs'
    sgd, arsg = _run_paths(log_dir, 'SGD'), _run_paths(log_dir, 'ARSG')
    with contextlib.ExitStack() as first:
        first.enter_context(locks.run_lock(sgd, 'cifar10_fine/SGD/seed0'))
        with locks.run_lock(arsg, 'cifar10_fine/ARSG/seed0'):
            arsg[0].write_text('{}\n')
            assert (log_dir / locks.MADE_MARK).is_file()      # until the run's files are written
        assert not (log_dir / locks.MADE_MARK).exists()
        assert (log_dir / 'checkpoints' / locks.MADE_MARK).is_file()     # nothing written there
    assert sorted(str(p.relative_to(log_dir)) for p in log_dir.rglob('*')) == [
        'cifar10_fine', 'cifar10_fine/ARSG', 'cifar10_fine/ARSG/seed0.jsonl']


def test_training_an_epoch_unmarks_the_run_s_folders(tmp_path):
    log, checkpoints = _run_paths(tmp_path / 'runs', 'SGD')
    train.train_run(PROTOCOL._replace(epochs=1), 'SGD', 0, _tiny_mnist(), log, checkpoints,
                    echo=lambda line: assert_no_marks(tmp_path) if 'epoch 1:' in line else None)
    assert_no_marks(tmp_path)


def assert_no_marks(root):
    assert list(Path(root).rglob(locks.MADE_MARK)) == []


def test_a_run_another_process_holds_keeps_the_folder_that_process_made(tmp_path):
    """A check refused by RunBusy removed the run's checkpoint folder if it was empty and had
    not existed when the check began: the other process had just made it for its first
    checkpoint."""
    log, checkpoints = tmp_path / 'run.jsonl', tmp_path / 'ck'
    with Holder(checkpoints) as holder:
        threading.Timer(1.0, checkpoints.mkdir).start()     # the other's first checkpoint
        with pytest.raises(locks.RunBusy):
            with locks.run_lock([log, checkpoints], 'mnist_logreg/SGD/seed0'):
                pass
        assert checkpoints.is_dir()
        assert _lock_files(tmp_path) == [holder.lock_file]
