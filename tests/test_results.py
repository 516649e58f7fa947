"""Grid search and the figures / summary made from logs."""

import pytest

from namsg.experiments import grid, hparams, plots, train
from test_train import PROTOCOL, _tiny_mnist


@pytest.mark.parametrize('method,count', [('ADAM', 48), ('NADAM', 36), ('AMSGRAD', 48),
                                          ('RANGER', 84), ('SGD', 32), ('RSG', 8), ('ARSG', 7),
                                          ('ARSGB', 7)])
def test_grid_sizes_are_b5s(method, count):
    tuples = hparams.grid_tuples(method)
    assert len(tuples) == count
    assert all(len(t) == len(hparams.TUPLE_FIELDS[method]) for t in tuples)


def test_table_a1_tuples_lie_on_b5s_grids():
    """Table A1 was picked from B.5's grids: each of its tuples is a grid point."""
    off_grid = {(m, s) for m in hparams.METHODS for s in hparams.SETTINGS
                if tuple(hparams.TABLE_A1[m][s]) not in set(hparams.grid_tuples(m))}
    assert off_grid == set(), off_grid


def test_run_grid_ranks_points_by_final_training_loss(tmp_path):
    rows = grid.run_grid(PROTOCOL._replace(epochs=1), 'ARSG', _tiny_mnist(), tmp_path / 'logs',
                         tmp_path / 'ck')
    assert len(rows) == 7
    losses = [r['final_train_loss'] for r in rows]
    assert losses == sorted(losses)
    header, _ = train.read_log(next((tmp_path / 'logs').glob('*/ARSG/a0.05_*.jsonl')))
    assert header['optimizer_params']['learning_rate'] == 0.05


def _fake_run(losses, accs):
    return [dict(train_loss=l, val_acc=a) for l, a in zip(losses, accs)]


def test_summary_counts_epochs_to_reach_the_reference_loss():
    runs = {'ADAM': [_fake_run([1.0, 0.5, 0.3], [0.5, 0.6, 0.7]),
                     _fake_run([1.0, 0.5, 0.1], [0.5, 0.8, 0.7])],
            'ARSG': [_fake_run([0.4, 0.2, 0.1], [0.6, 0.9, 0.8])],
            'SGD': [_fake_run([2.0, 1.0, 0.9], [0.1, 0.2, 0.3])]}
    rows = {r['method']: r for r in plots.summary_rows(runs)}
    assert rows['ADAM']['final_loss'] == pytest.approx(0.2)
    assert rows['ADAM']['best_acc'] == pytest.approx(0.75)
    assert rows['ADAM']['epochs_to_reference'] == 3
    assert rows['ARSG']['epochs_to_reference'] == 2
    assert rows['SGD']['epochs_to_reference'] is None
    table = plots.summary_markdown(runs)
    assert '| ARSG | 1 | 0.1000 +- 0.0000 | 0.9000 +- 0.0000 | 2 |' in table


def test_plots_are_written_from_logs(tmp_path):
    for seed in (0, 1):
        train.train_run(PROTOCOL._replace(epochs=2), 'ADAM', seed, _tiny_mnist(),
                        tmp_path / 'logs' / 'mnist_logreg' / 'ADAM' / ('seed%d.jsonl' % seed),
                        tmp_path / 'ck' / str(seed))
    runs = plots.load_runs(tmp_path / 'logs')
    assert len(runs['mnist_logreg']['ADAM']) == 2
    plots.plot_setting(runs['mnist_logreg'], 'test', tmp_path / 'out.png')
    assert (tmp_path / 'out.png').read_bytes()[:4] == b'\x89PNG'
    plots.plot_figure1(tmp_path / 'figure1.png', points=21)
    assert (tmp_path / 'figure1.png').stat().st_size > 1000
