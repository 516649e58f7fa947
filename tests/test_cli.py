"""The reproduction scripts' command line as a new user meets it: bad input refused before any
work, with nothing created or written; runs identified by their data, not its path; user runs
kept out of the committed logs; progress that shows wherever the output goes."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from namsg.experiments import cli, data, train
from test_data import _write_mnist

ROOT = Path(__file__).resolve().parent.parent


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*'))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory, no $NAMSG_DATA_DIR, no network, and no training allowed:
    every command here must stop before it trains."""
    monkeypatch.delenv('NAMSG_DATA_DIR', raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, '_download_mnist', lambda *a, **k: False)
    monkeypatch.setattr(cli, 'train_run', lambda *a, **k: pytest.fail('training started'))
    return tmp_path


def _truncated_log(root):
    log = root / 'runs' / 'mnist-sample' / 'mnist_logreg' / 'ARSG' / 'seed0.jsonl'
    log.parent.mkdir(parents=True)
    log.write_text('{"type": "header", "run": "mnist_logreg/ARSG/seed0"}\n{"type": "epo')
    return log


def _labels_above_9(root):
    (root / 'mnist').mkdir()
    _write_mnist(root / 'mnist', gz=False)
    labels = root / 'mnist' / 'train-labels-idx1-ubyte'
    raw = bytearray(labels.read_bytes())
    raw[-1] = 12
    labels.write_bytes(bytes(raw))


def _file_as_log_dir(root):
    (root / 'afile').write_text('x')


# (argv, set-up, what the message must say): the list of bad input.
BAD_INPUT = [
    (['--seeds', ''], None, '--seeds'),
    (['--seeds', '-1'], None, '--seeds'),
    (['--seeds', '0,x'], None, '--seeds'),
    (['--methods', 'LAMB'], None, '--methods: unknown LAMB'),
    (['--settings', 'cifar10_fine'], None, '--settings: unknown cifar10_fine'),
    (['--scale', '2'], None, '--scale'),
    (['--scale', '0.1', '--methods', 'ARSGB'], None, 'boost in mnist_logreg to epoch 1'),
    (['--gpus', 'x'], None, '--gpus'),
    (['--data-dir', 'mnsit'], None, '--data-dir mnsit does not exist'),
    (['--data-dir', '/proc/nope'], None, '--data-dir /proc/nope does not exist'),
    (['--data-dir', 'mnist'], lambda root: (root / 'mnist').mkdir(), 'MNIST files missing'),
    (['--data-dir', 'mnist'], _labels_above_9, 'labels up to 12'),
    (['--log-dir', '/sys/namsg-logs'], None, '--log-dir /sys/namsg-logs: cannot write'),
    (['--checkpoint-dir', '/sys/namsg-ck'], None, '--checkpoint-dir /sys/namsg-ck: cannot'),
    (['--log-dir', 'afile/logs'], _file_as_log_dir, 'is a file, not a directory'),
    (['--settings', 'mnist_logreg', '--methods', 'ARSG'], _truncated_log,
     r'seed0.jsonl: line 2 is not a complete JSON record.*move the log away'),
]


@pytest.mark.parametrize('argv,setup,message', BAD_INPUT,
                         ids=[' '.join(a) or 'empty' for a, _, _ in BAD_INPUT])
def test_bad_input_is_refused_before_any_work_and_writes_nothing(workdir, argv, setup,
                                                                 message):
    if setup is not None:
        setup(workdir)
    before = {p: (workdir / p).read_bytes() for p in _tree(workdir)
              if (workdir / p).is_file()}
    listing = _tree(workdir)
    with pytest.raises(SystemExit, match='error: .*' + message):
        cli.main('mnist', argv)
    assert _tree(workdir) == listing                         # nothing created
    assert {p: (workdir / p).read_bytes() for p in before} == before   # nothing written


def test_data_dir_from_the_environment_is_named_when_missing(workdir, monkeypatch):
    monkeypatch.setenv('NAMSG_DATA_DIR', str(workdir / 'typo'))
    with pytest.raises(SystemExit, match=r'does not exist \(from \$NAMSG_DATA_DIR\)'):
        cli.main('mnist', [])
    assert _tree(workdir) == []


def test_a_mistyped_data_dir_is_neither_created_nor_downloaded_into(workdir, monkeypatch):
    monkeypatch.setattr(data, '_download_mnist', lambda *a, **k: pytest.fail('downloading'))
    with pytest.raises(data.DataError, match='does not exist'):
        data.load_mnist(workdir / 'typo')
    assert not (workdir / 'typo').exists()


def test_an_unknown_kvstore_is_refused_by_argparse(workdir, capsys):
    with pytest.raises(SystemExit):
        cli.main('mnist', ['--kvstore', 'bogus'])
    err = capsys.readouterr().err
    assert "error: argument --kvstore: invalid choice: 'bogus'" in err and 'dist_sync' in err
    assert _tree(workdir) == []


def test_method_and_setting_names_are_taken_in_any_case():
    assert cli._split('arsg, Adam,ARSGB,arsg', cli.METHODS, '--methods') == [
        'ARSG', 'ADAM', 'ARSGB']
    assert cli._split('MNIST_CNN', ('mnist_logreg', 'mnist_cnn'), '--settings') == ['mnist_cnn']


def test_help_states_each_default_once_and_speaks_of_its_own_data():
    for experiment in cli.EXPERIMENTS:
        text = cli.build_parser(experiment).format_help()
        assert '(default: None)' not in text
        assert all(line.count('(default') <= 1 for line in ' '.join(text.split()).split('--'))
    cifar = cli.build_parser('cifar10').format_help()
    assert 'MNIST' not in cifar and 'cifar-10-batches-py' in cifar


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / (name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('script', ['benchmark_optimizers', 'benchmark_input_pipeline',
                                    'plot_results', 'reproduce_mnist', 'reproduce_cifar10'])
def test_script_help_is_whole_sentences(script, capsys):
    module = _load_script(script)
    parse = getattr(module, 'parse_args', None)
    with pytest.raises(SystemExit):
        if parse is None:
            cli.main(script.split('_')[1], ['--help'])
        else:
            parse(['--help'])
    text = capsys.readouterr().out
    description = text.split('\n\n')[1]
    assert description.rstrip()[-1] in '.?)', description
    assert '(default: None)' not in text


def _run(argv, capsys):
    cli.main('mnist', argv + ['--settings', 'mnist_logreg', '--methods', 'arsg',
                              '--scale', '0.05', '--seeds', '0', '--no-progress'])
    return capsys.readouterr().out


def test_runs_are_identified_by_their_data_not_its_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in 'ac':
        (tmp_path / name).mkdir()
    _write_mnist(tmp_path / 'a', n_train=40, n_test=20, gz=False)
    out = _run(['--data-dir', 'a'], capsys)
    assert 'mnist_logreg/ARSG/seed0 epoch 1:' in out
    assert (tmp_path / 'runs' / 'mnist' / 'mnist_logreg' / 'ARSG' / 'seed0.jsonl').is_file()
    assert not (tmp_path / 'logs').exists()           # logs/ holds the committed reference

    shutil.copytree(tmp_path / 'a', tmp_path / 'b')   # the same data elsewhere: the same run
    shutil.rmtree(tmp_path / 'runs' / 'mnist' / 'checkpoints')
    monkeypatch.setattr(train.Prepared, 'train_batches', lambda *a: pytest.fail('rerun'))
    out = _run(['--data-dir', str(tmp_path / 'b')], capsys)
    assert 'mnist_logreg/ARSG/seed0: finished earlier (1 epochs in' in out

    _write_mnist(tmp_path / 'c', n_train=40, n_test=20, gz=False, seed=1)   # other data
    log = tmp_path / 'runs' / 'mnist' / 'mnist_logreg' / 'ARSG' / 'seed0.jsonl'
    before = log.read_text()
    with pytest.raises(SystemExit, match=r'error: log .*seed0.jsonl was written by another '
                                         r'configuration \(data: '):
        _run(['--data-dir', 'c'], capsys)
    assert log.read_text() == before


def test_progress_lines_and_resume_notes_reach_the_output(tmp_path, monkeypatch):
    from test_train import PROTOCOL, _tiny_mnist
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
    monkeypatch.setattr(train.time, 'monotonic', lambda: next(clock))
    tally = train._Tally()
    lines = []
    progress = train._Progress(iter(range(8)), 8, 'run epoch 1', tally, every=30,
                               echo=lines.append)
    for _ in progress:
        tally.count += 400
        tally.loss += 200.0
    assert lines == ['run epoch 1: batch 3/8, running loss 0.50000, 40 images/s',
                     'run epoch 1: batch 6/8, running loss 0.50000, 40 images/s']


def test_cifar10_trains_from_each_layout_as_one_run(tmp_path, monkeypatch, capsys):
    """The Python release trains; the binary release and the image folder of the same pixels
    are the same data, so the finished run is found and skipped."""
    from test_data import write_cifar_binary, write_cifar_images, write_cifar_python
    monkeypatch.chdir(tmp_path)
    argv = ['--settings', 'cifar10_fine', '--methods', 'sgd', '--scale', '0.0125',
            '--no-progress']
    cli.main('cifar10', argv + ['--data-dir', str(write_cifar_python(tmp_path / 'py'))])
    out = capsys.readouterr().out
    assert 'data: CIFAR-10 Python release in' in out
    assert 'cifar10_fine/SGD/seed0 epoch 1: train loss' in out
    assert (tmp_path / 'runs' / 'cifar10' / 'cifar10_fine.png').is_file()
    for folder in (write_cifar_binary(tmp_path / 'bin'), write_cifar_images(tmp_path / 'img')):
        cli.main('cifar10', argv + ['--data-dir', str(folder)])
        assert 'cifar10_fine/SGD/seed0: finished earlier' in capsys.readouterr().out


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C ended in a KeyboardInterrupt traceback from inside an MXNet op."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a').mkdir()
    _write_mnist(tmp_path / 'a', n_train=40, n_test=20, gz=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, 'train_run', interrupted)
    with pytest.raises(SystemExit) as stop:
        _run(['--data-dir', 'a'], capsys)
    assert stop.value.code == 130
    out = capsys.readouterr().out
    assert 'interrupted: mnist_logreg/ARSG/seed0 stopped in an epoch; the same command resumes' \
           in out


def test_the_reference_is_found_from_any_working_directory(tmp_path, monkeypatch, capsys):
    """Run from outside the checkout, the comparison with logs/mnist was dropped without a
    word."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a').mkdir()
    _write_mnist(tmp_path / 'a', n_train=40, n_test=20, gz=False)
    out = _run(['--data-dir', 'a'], capsys)
    checkout_logs = Path(cli.__file__).resolve().parents[2] / 'logs' / 'mnist'
    assert 'No reference runs of the same protocol in `%s`' % checkout_logs in out
