"""Where a run stands before it is trained: a log or checkpoint of another configuration, a
damaged checkpoint, a finished log, an unfinished one without its checkpoint; nothing written
is ever lost."""

import json
import re

import pytest

from namsg.experiments import prepare, resume, runs, train
from namsg.experiments.logs import read_log, write_log
from test_train import PROTOCOL, _tiny_mnist


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    data = _tiny_mnist()
    train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 0, data, tmp_path / 'r.jsonl',
                    tmp_path / 'ck')
    before = (tmp_path / 'r.jsonl').read_text()
    with pytest.raises(runs.CheckpointError, match='another configuration'):
        train.train_run(PROTOCOL._replace(epochs=1, batch_size=8), 'ADAM', 0, data,
                        tmp_path / 'r.jsonl', tmp_path / 'ck')
    assert (tmp_path / 'r.jsonl').read_text() == before      # nothing written is lost


def test_existing_log_of_another_configuration_is_never_overwritten(tmp_path):
    data = _tiny_mnist()
    log = tmp_path / 'r.jsonl'
    train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 0, data, log, tmp_path / 'ck1')
    before = log.read_text()
    with pytest.raises(runs.CheckpointError, match='another configuration'):
        train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 1, data, log, tmp_path / 'ck2')
    assert log.read_text() == before


def test_finished_log_without_checkpoints_is_not_rerun(tmp_path, monkeypatch):
    data = _tiny_mnist()
    log = tmp_path / 'r.jsonl'
    first = train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 0, data, log, tmp_path / 'a')
    monkeypatch.setattr(prepare.Prepared, 'train_batches', lambda *a: pytest.fail('rerun'))
    again = train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 0, data, log, tmp_path / 'b')
    assert again == first


def test_skipping_a_finished_run_leaves_its_log_as_the_training_wrote_it(tmp_path):
    """The skip rewrote the log's header with the command that skipped the run."""
    args = (PROTOCOL, 'ARSG', 0, _tiny_mnist(), tmp_path / 'run.jsonl', tmp_path / 'ck')
    train.train_run(*args, command='the command that trained it')
    before = (tmp_path / 'run.jsonl').read_bytes()
    train.train_run(*args, command='a later command')
    assert (tmp_path / 'run.jsonl').read_bytes() == before
    records = read_log(tmp_path / 'run.jsonl')[1]
    (tmp_path / 'run.jsonl').unlink()            # a lost log is rebuilt from the checkpoint
    train.train_run(*args, command='a later command')
    assert read_log(tmp_path / 'run.jsonl')[1] == records


def test_an_unfinished_log_without_its_checkpoint_is_never_overwritten(tmp_path):
    """Training it again from epoch 1 overwrote the epochs logged so far (e.g. a run committed
    unfinished, cloned without its checkpoint)."""
    args = (PROTOCOL, 'ARSG', 0, _tiny_mnist(), tmp_path / 'run.jsonl', tmp_path / 'ck')
    train.train_run(*args)
    header, records = read_log(tmp_path / 'run.jsonl')
    write_log(tmp_path / 'run.jsonl', header, records[:2])
    import shutil
    shutil.rmtree(tmp_path / 'ck')
    before = (tmp_path / 'run.jsonl').read_bytes()
    with pytest.raises(runs.CheckpointError, match='has 2 of 3 epochs but no checkpoint'):
        train.train_run(*args)
    assert (tmp_path / 'run.jsonl').read_bytes() == before


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
    monkeypatch.setattr(prepare.Prepared, 'train_batches', lambda *a, **k: pytest.fail('trained'))
    lines = []
    with pytest.raises(runs.CheckpointError) as error:
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
    header = runs.run_header(PROTOCOL, 'ARSG', 0, data, kvstore='dist_sync', workers=2)
    write_log(tmp_path / 'r.jsonl', header, [dict(type='epoch', epoch=1)])
    with pytest.raises(runs.CheckpointError) as error:
        resume.run_state(header, tmp_path / 'r.jsonl', tmp_path / 'ck', distributed=True)
    message = str(error.value)
    assert 'has 1 of 3 epochs and there is no checkpoint (a dist_* job keeps none' in message
    assert 'restore' not in message and message.endswith('move the log away to train this run '
                                                         'from the start')
    (tmp_path / 'r.jsonl').write_text('{"type": "hea')
    with pytest.raises(runs.CheckpointError, match=r'no checkpoint \(a dist_\* job keeps none.*'
                                                   r'move the log away'):
        resume.run_state(header, tmp_path / 'r.jsonl', tmp_path / 'ck', distributed=True)


def _cut_in_the_last_record(log):
    log.write_text(log.read_text()[:-20])


def _cut_in_the_header(log):
    log.write_text(log.read_text()[:30])


@pytest.mark.parametrize('damage,problem,kept', [
    (_cut_in_the_last_record, 'was damaged (line 4 is cut short or damaged)', True),
    (_cut_in_the_header, 'was damaged (line 1 is cut short or damaged)', False),
    (lambda log: log.unlink(), 'was missing', False)], ids=['record', 'header', 'missing'])
def test_a_finished_runs_damaged_log_is_rebuilt_saying_so_and_keeping_its_command(
        tmp_path, damage, problem, kept):
    """With its checkpoint there, a log cut mid-line was rewritten with the header of the
    command that skipped the run, which printed only "finished earlier (...): skipped"."""
    log, checkpoints = tmp_path / 'run.jsonl', tmp_path / 'ck'
    args = (PROTOCOL, 'ARSG', 0, _tiny_mnist(), log, checkpoints)
    records = train.train_run(*args, command='the command that trained it')
    damage(log)
    lines = []
    assert train.train_run(*args, command='a later command', echo=lines.append) == records
    assert lines == ['mnist_logreg/ARSG/seed0: finished earlier (%s): skipped; its log %s %s: '
                     'rebuilt from the checkpoint, %s' % (
                         checkpoints / 'epoch-0003', log, problem,
                         'keeping its header (with the command that trained the run)' if kept
                         else 'with this command in its header' + (
                             ' (its own could not be read)' if 'damaged' in problem else ''))]
    header, logged = read_log(log)
    assert logged == records
    assert header['command'] == ('the command that trained it' if kept else 'a later command')


def test_a_resumed_runs_damaged_log_is_named_in_the_resume_note(tmp_path):
    log, checkpoints = tmp_path / 'run.jsonl', tmp_path / 'ck'
    data = _tiny_mnist()
    train.train_run(PROTOCOL._replace(epochs=1), 'SGD', 0, data, log, checkpoints)
    state = json.loads((checkpoints / 'epoch-0001' / 'state.json').read_text())
    state['config']['protocol']['epochs'] = 3        # as if interrupted after epoch 1 of 3
    (checkpoints / 'epoch-0001' / 'state.json').write_text(json.dumps(state))
    header, logged = read_log(log)
    header['protocol']['epochs'] = 3
    write_log(log, header, logged)
    _cut_in_the_last_record(log)
    lines = []
    records = train.train_run(PROTOCOL, 'SGD', 0, data, log, checkpoints, echo=lines.append)
    assert lines[0] == ('mnist_logreg/SGD/seed0: resuming from %s: continuing at epoch 2 of 3; '
                        'its log %s was damaged (line 2 is cut short or damaged): rewritten from '
                        'the checkpoint after the next epoch' % (checkpoints / 'epoch-0001', log))
    assert read_log(log)[1] == records and len(records) == 3


def test_a_whole_log_of_another_configuration_beside_a_checkpoint_is_never_overwritten(
        tmp_path):
    """The log was not read when a checkpoint was there: a finished run rewrote it."""
    log, checkpoints = tmp_path / 'run.jsonl', tmp_path / 'ck'
    data = _tiny_mnist()
    train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 0, data, log, checkpoints)
    train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 1, data, tmp_path / 'other.jsonl',
                    tmp_path / 'ck1')
    (tmp_path / 'other.jsonl').replace(log)          # seed 1's log where seed 0's should be
    before = log.read_bytes()
    with pytest.raises(runs.CheckpointError, match=r'log .*run.jsonl was written by another '
                                                   r'configuration of this run \(run: '):
        train.train_run(PROTOCOL._replace(epochs=1), 'ADAM', 0, data, log, checkpoints)
    assert log.read_bytes() == before


def _checkpoint(folder, header, epoch=1):
    """A checkpoint of ``header``'s run after ``epoch`` that reads as whole: what run_state
    reads of it (an empty network and Trainer state)."""
    import pickle
    import mxnet as mx
    folder.mkdir(parents=True)
    records = [dict(type='epoch', epoch=e) for e in range(1, epoch + 1)]
    (folder / 'state.json').write_text(json.dumps(dict(
        config=runs.config_of(header), epoch=epoch, iteration=epoch, records=records,
        policy=None)))
    mx.nd.save(str(folder / 'net.params'), {})
    (folder / 'trainer.states').write_bytes(pickle.dumps({}))


@pytest.mark.parametrize('found', ['checkpoint', 'log', 'log beside a checkpoint'])
def test_another_configuration_names_each_value_that_changed_not_whole_dicts(tmp_path, found):
    """A resume at --scale 0.0375 of a run made at 0.025 printed both protocol dicts whole
    ("protocol: {'setting': ..., 'scale': 0.025} then, {...} now"), the changed keys left to the
    reader to find."""
    from namsg.experiments.hparams import PROTOCOLS
    data = _tiny_mnist()
    then, now = (runs.run_header(PROTOCOLS['cifar10_fine'].scaled(scale), 'ARSGB', 0, data)
                 for scale in (0.025, 0.0375))
    log, checkpoints = tmp_path / 'seed0.jsonl', tmp_path / 'ck'
    if found == 'checkpoint':
        _checkpoint(checkpoints / 'epoch-0001', then)
    else:
        write_log(log, then, [])
    if found == 'log beside a checkpoint':
        _checkpoint(checkpoints / 'epoch-0001', now)
    with pytest.raises(runs.CheckpointError) as refused:
        resume.run_state(now, log, checkpoints)
    message = str(refused.value)
    assert message.startswith(
        '%s by another configuration of this run (boost_epoch: 2 then, 3 now; '
        'protocol.boost_epoch: 2 then, 3 now; protocol.epochs: 2 then, 3 now; '
        'protocol.lr_drop_iteration: 300 then, 450 now; protocol.scale: 0.025 then, 0.0375 '
        'now). Its files are kept' % ('checkpoint %s was made' % (checkpoints / 'epoch-0001')
                                      if found == 'checkpoint' else
                                      'log %s was written' % log)), message


def test_a_changed_value_is_named_by_its_path_inside_the_configuration():
    then = dict(kvstore='device', optimizer_params=dict(learning_rate=0.1, wd=0.0),
                protocol=dict(scale=1.0, epochs=20), contexts=['cpu(0)'])
    now = dict(kvstore='local', optimizer_params=dict(learning_rate=0.05, wd=0.0, mu=0.9),
               protocol=dict(scale=1.0, epochs=20), contexts=['cpu(0)', 'cpu(1)'], workers=2)
    with pytest.raises(runs.CheckpointError) as refused:
        runs.check_config(then, now, 'log x was written', 'x', None)
    assert str(refused.value).startswith(
        "log x was written by another configuration of this run (contexts: ['cpu(0)'] then, "
        "['cpu(0)', 'cpu(1)'] now; kvstore: 'device' then, 'local' now; "
        "optimizer_params.learning_rate: 0.1 then, 0.05 now; optimizer_params.mu: absent then, "
        "0.9 now; workers: absent then, 2 now). Its files are kept"), str(refused.value)
