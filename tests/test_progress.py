"""What a run reports as it trains: progress lines bounded by time, batches counted as they are
computed, resume notes."""

import json
import time

import mxnet as mx
import numpy as np

from namsg.experiments import progress, train
from test_train import PROTOCOL, _tiny_mnist


def test_progress_lines_and_resume_notes_reach_the_output(tmp_path, monkeypatch):
    lines = []
    prepared = _tiny_mnist()
    train.train_run(PROTOCOL, 'ADAM', 0, prepared, tmp_path / 'r.jsonl', tmp_path / 'ck',
                    echo=lines.append, progress_every=0)
    batch_lines = [l for l in lines if 'running loss' in l]
    assert batch_lines[0].startswith('mnist_logreg/ADAM/seed0 epoch 1: batch 1/4, running '
                                     'loss ') and batch_lines[0].endswith('images/s')
    assert len(batch_lines) == 3 * 3                       # every batch but an epoch's last
    lines.clear()
    train.train_run(PROTOCOL, 'ADAM', 0, prepared, tmp_path / 'r.jsonl', tmp_path / 'ck',
                    echo=lines.append, progress_every=3600)
    assert lines == ['mnist_logreg/ADAM/seed0: finished earlier (%s): skipped'
                     % (tmp_path / 'ck' / 'epoch-0003')]

    # Interrupted after epoch 1 (its checkpoint and log are what an interruption leaves).
    train.train_run(PROTOCOL._replace(epochs=1), 'SGD', 0, prepared, tmp_path / 's.jsonl',
                    tmp_path / 'cs')
    state = json.loads((tmp_path / 'cs' / 'epoch-0001' / 'state.json').read_text())
    state['config']['protocol']['epochs'] = 3
    (tmp_path / 'cs' / 'epoch-0001' / 'state.json').write_text(json.dumps(state))
    lines.clear()
    train.train_run(PROTOCOL, 'SGD', 0, prepared, tmp_path / 's.jsonl', tmp_path / 'cs',
                    echo=lines.append)
    assert lines[0] == ('mnist_logreg/SGD/seed0: resuming from %s: continuing at epoch 2 of 3'
                        % (tmp_path / 'cs' / 'epoch-0001'))
    assert [l.split(':')[0] for l in lines[1:]] == ['mnist_logreg/SGD/seed0 epoch 2',
                                                    'mnist_logreg/SGD/seed0 epoch 3']


def test_interval_lines_are_bounded_by_time(monkeypatch):
    clock = iter(np.arange(0.0, 100.0, 10.0))          # 10 s a batch
    monkeypatch.setattr(progress.time, 'monotonic', lambda: next(clock))
    tally = progress.Tally()
    lines = []
    bar = progress.Progress(iter(range(8)), 8, 'run epoch 1', tally, every=30,
                            echo=lines.append)
    for _ in bar:
        tally.count += 400
        tally.loss += 200.0
    assert lines == ['run epoch 1: batch 3/8, running loss 0.50000, 40 images/s',
                     'run epoch 1: batch 6/8, running loss 0.50000, 40 images/s']


class _Sleep(mx.operator.CustomOp):
    """Identity that takes 0.2 s in MXNet's engine, as a batch's computation does."""

    def forward(self, is_train, req, in_data, out_data, aux):
        time.sleep(0.2)
        self.assign(out_data[0], req[0], in_data[0])


@mx.operator.register('namsg_test_sleep')
class _SleepProp(mx.operator.CustomOpProp):
    def create_operator(self, ctx, shapes, dtypes):
        return _Sleep()


def test_progress_counts_batches_computed_not_batches_queued():
    """The engine runs behind Python: the loop pulled every batch of an epoch at once, and
    the bar and the progress lines ran ahead of the training by up to an epoch."""
    pulled = []

    def batches():
        for i in range(4):
            pulled.append(time.monotonic())
            yield i

    tally = progress.Tally()
    weight = mx.nd.ones((2,))
    start = time.monotonic()
    for _ in progress.Progress(batches(), 4, 'run epoch 1', tally):
        # Each batch reads the weights the one before it wrote, as in training.
        weight = mx.nd.Custom(weight, op_type='namsg_test_sleep')
        tally.add([mx.nd.ones((2, 3))], [mx.nd.zeros((2,))], [weight])
    # The 4th batch is pulled once the 2nd one's loss is summed: after two of the 0.2 s ops.
    assert pulled[3] - start >= 0.35
    assert tally.means() == (1.0, 1.0)
