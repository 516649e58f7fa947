"""The shared training loop: logs, checkpoints, exact resume, boost and step-size drop,
CIFAR-10 augmentation, the command line."""

import json
import re

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
