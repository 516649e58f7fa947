"""scripts/grid_search.py and namsg.experiments.grid on tiny MNIST files."""

import importlib.util
from pathlib import Path

import pytest

from namsg.experiments import grid, hparams
from test_data import _write_mnist

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
    logs = sorted(Path('runs/grid/logs/mnist_logreg/ARSG').glob('*.jsonl'))
    assert len(logs) == 7
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
