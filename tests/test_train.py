"""The training loop: the log's header and epoch records, boost and step-size drop, exact
resume, and runs shared out between processes."""

import subprocess
from pathlib import Path

import numpy as np
import pytest

from namsg.experiments import prepare, train
from namsg.experiments.hparams import PROTOCOLS
from namsg.experiments.locks import RunBusy
from namsg.experiments.logs import read_log

ROOT = Path(__file__).resolve().parent.parent


def _tiny_mnist(n_train=64, n_test=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n_train + n_test, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, n_train + n_test).astype(np.int32)
    x[np.arange(len(y)), 0, y, y] += 3.0      # a learnable signal
    return prepare.Prepared(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


# ARSGB with its boost at epoch 2 and a step-size drop at iteration 5 (of 4 per epoch).
PROTOCOL = PROTOCOLS['mnist_logreg']._replace(epochs=3, batch_size=16, boost_epoch=2,
                                              lr_drop_iteration=5)


def _strip_times(records):
    return [{k: v for k, v in r.items() if k != 'seconds'} for r in records]


def test_log_has_header_and_one_line_per_epoch(tmp_path):
    records = train.train_run(PROTOCOL, 'ARSGB', 0, _tiny_mnist(), tmp_path / 'run.jsonl',
                              tmp_path / 'ck', command='pytest', data_source='tiny')
    header, logged = read_log(tmp_path / 'run.jsonl')
    assert logged == records and len(records) == 3
    assert header['method'] == 'ARSGB' and header['optimizer'] == 'arsg'
    assert header['optimizer_params']['mu'] == 0.05 and header['boost_epoch'] == 2
    assert set(header['versions']) == {'namsg', 'namsg_commit', 'mxnet', 'numpy', 'python',
                                       'cpu', 'omp_num_threads'}
    # Run from this checkout: its commit (the tests may run on uncommitted changes); from an
    # installed copy (.ci/compat.sh), none.
    import namsg
    if ROOT in Path(namsg.__file__).resolve().parents:
        assert header['versions']['namsg_commit'].split('-')[0] == subprocess.run(
            ['git', '-C', str(ROOT), 'rev-parse', '--short=12', 'HEAD'], capture_output=True,
            text=True).stdout.strip()
    else:
        assert header['versions']['namsg_commit'] is None
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

    original = prepare.Prepared.train_batches
    calls = {'n': 0}

    def interrupted(self, batch_size, rng, *shard, **kwargs):
        calls['n'] += 1
        for i, batch in enumerate(original(self, batch_size, rng, *shard, **kwargs)):
            if calls['n'] == 2 and i == 2:       # in the middle of epoch 2
                raise KeyboardInterrupt
            yield batch
    monkeypatch.setattr(prepare.Prepared, 'train_batches', interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.train_run(PROTOCOL, method, 3, data, tmp_path / 'b.jsonl', tmp_path / 'b')
    _, logged = read_log(tmp_path / 'b.jsonl')
    assert len(logged) == 1                                  # the log stops at epoch 1
    assert [p.name for p in (tmp_path / 'b').iterdir()] == ['epoch-0001']
    monkeypatch.setattr(prepare.Prepared, 'train_batches', original)

    resumed = train.train_run(PROTOCOL, method, 3, data, tmp_path / 'b.jsonl', tmp_path / 'b')
    assert _strip_times(resumed) == _strip_times(expected)
    again = train.train_run(PROTOCOL, method, 3, data, tmp_path / 'b.jsonl', tmp_path / 'b')
    assert again == resumed                                  # a finished run is not rerun


@pytest.mark.parametrize('checkpoint', ['with the record', 'without it, as before'])
def test_a_run_resumed_after_its_boost_is_not_boosted_again(tmp_path, monkeypatch, checkpoint):
    """ARSGB interrupted in epoch 3, after its boost at epoch 2: resumed from the epoch-2
    checkpoint it ends as the uninterrupted run, whether the optimizer in trainer.states carries
    the record of its boosts or, as checkpoints written before the record existed, not (the
    policy's state.json then says which boosts were done)."""
    import pickle
    data = _tiny_mnist()
    expected = train.train_run(PROTOCOL, 'ARSGB', 3, data, tmp_path / 'a.jsonl', tmp_path / 'a')
    original = prepare.Prepared.train_batches
    calls = {'n': 0}

    def interrupted(self, *args, **kwargs):
        calls['n'] += 1
        for i, batch in enumerate(original(self, *args, **kwargs)):
            if calls['n'] == 3 and i == 1:
                raise KeyboardInterrupt
            yield batch
    monkeypatch.setattr(prepare.Prepared, 'train_batches', interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.train_run(PROTOCOL, 'ARSGB', 3, data, tmp_path / 'b.jsonl', tmp_path / 'b')
    monkeypatch.setattr(prepare.Prepared, 'train_batches', original)
    states = tmp_path / 'b' / 'epoch-0002' / 'trainer.states'
    saved, optimizer = pickle.loads(states.read_bytes())
    assert [b['epoch'] for b in optimizer.obsb_boosts] == [2] and optimizer.mu == 0.1
    if checkpoint != 'with the record':
        del optimizer.obsb_boosts
        states.write_bytes(pickle.dumps((saved, optimizer)))

    resumed = train.train_run(PROTOCOL, 'ARSGB', 3, data, tmp_path / 'b.jsonl', tmp_path / 'b')
    assert _strip_times(resumed) == _strip_times(expected)
    assert [r['mu'] for r in resumed] == [0.05, 0.1, 0.1]


def test_logged_step_size_follows_the_schedule_on_a_worker_that_never_updates():
    """On a parameter-server worker the optimizer's own count stays 0: the log must still show
    the step-size drop the servers apply."""
    import mxnet as mx
    opt = mx.optimizer.create('arsg', learning_rate=0.1, lr_scheduler=mx.lr_scheduler.
                              MultiFactorScheduler(step=[5], factor=0.1, base_lr=0.1))
    assert opt.learning_rate == pytest.approx(0.1)      # what the log showed before
    assert train.logged_lr(opt, 4) == pytest.approx(0.1)
    assert train.logged_lr(opt, 6) == pytest.approx(0.01)


def test_train_all_puts_off_busy_runs_and_then_waits_for_them():
    calls, lines = [], []

    def fake(run, wait):
        calls.append((run, wait))
        if run in ('b', 'd') and not wait:
            raise RunBusy(run, Path('/x/%s.jsonl' % run), 'pid 7 on h')
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


