"""The reproduction scripts' command line as a new user meets it: bad input refused before any
work, with nothing created or written; runs identified by their data, not its path; user runs
kept out of the committed logs; progress that shows wherever the output goes."""

import errno
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

from namsg.experiments import cli, data, prepare
from namsg.experiments.logs import read_log
from test_data import _write_mnist, cifar_sizes, mnist_sizes  # noqa: F401 -- autouse fixtures

ROOT = Path(__file__).resolve().parent.parent


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*'))


def _offline(url, timeout=None):
    raise urllib.error.URLError(OSError(-3, 'Temporary failure in name resolution'))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory, no $NAMSG_DATA_DIR, no network (urlopen fails as it does
    offline), and no training allowed: every command here must stop before it trains."""
    monkeypatch.delenv('NAMSG_DATA_DIR', raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(urllib.request, 'urlopen', _offline)
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
    (['--seeds', '0,,1'], None, "--seeds .*got '0,,1'"),
    (['--seeds', '0,'], None, "--seeds .*got '0,'"),
    (['--data-dir', ''], None, '--data-dir is empty; give a folder'),
    (['--log-dir', ' '], None, '--log-dir is empty'),
    (['--checkpoint-dir', ''], None, '--checkpoint-dir is empty'),
    (['--methods', 'LAMB'], None, '--methods: unknown LAMB'),
    (['--methods', 'ARSG,,SGD'], None, "--methods: an empty item in 'ARSG,,SGD'"),
    (['--settings', 'mnist_logreg,'], None, "--settings: an empty item in 'mnist_logreg,'"),
    (['--methods', ' , '], None, '--methods: none given'),
    (['--settings', 'cifar10_fine'], None, '--settings: unknown cifar10_fine'),
    (['--scale', '2'], None, '--scale'),
    (['--scale', '0.1', '--methods', 'ARSGB'], None,
     r"boost to epoch 1 .* in mnist_logreg \(of 2 epochs\) and mnist_cnn \(of 1 epoch\); "
     r"use --scale above 0.1,"),
    (['--gpus', 'x'], None, '--gpus'),
    (['--gpus', '0'], None, r'--gpus 0: no GPU 0; MXNet sees 0 GPUs here; leave --gpus empty'),
    (['--progress-every', 'nan'], None, '--progress-every takes seconds >= 0, got nan'),
    (['--data-dir', 'mnsit'], None, r'data folder mnsit \(from --data-dir\) does not exist'),
    (['--data-dir', '/proc/nope'], None, 'data folder /proc/nope .* does not exist'),
    (['--data-dir', 'mnist'], lambda root: (root / 'mnist').mkdir(),
     r'MNIST files missing.*The download failed: cannot reach https?://.*by hand'),
    (['--data-dir', 'mnist'], _labels_above_9, 'labels up to 12'),
    (['--log-dir', '/sys/namsg-logs'], None, '--log-dir /sys/namsg-logs: the directory cannot'),
    (['--checkpoint-dir', '/sys/namsg-ck'], None, '--checkpoint-dir /sys/namsg-ck: the dir'),
    (['--log-dir', 'afile/logs'], _file_as_log_dir, 'afile is a file, not a directory'),
    (['--settings', 'mnist_logreg', '--methods', 'ARSG'], _truncated_log,
     r'seed0.jsonl: line 2 is not a complete JSON record.*move the log away'),
]


def test_horovod_missing_is_said_before_any_work(workdir, monkeypatch):
    """It surfaced as an ImportError traceback from the first run's store."""
    monkeypatch.setitem(sys.modules, 'horovod', None)        # as if not installed
    monkeypatch.setattr(data, 'load_mnist_sample', lambda: pytest.fail('data loaded'))
    with pytest.raises(SystemExit, match='error: --kvstore horovod: Horovod is not installed '
                                         'here; install it built for MXNet'):
        cli.main('mnist', ['--kvstore', 'horovod'])
    assert _tree(workdir) == []


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


@pytest.mark.parametrize('script', ['reproduce_mnist', 'reproduce_cifar10', 'grid_search'])
@pytest.mark.parametrize('variable,value,message', [
    ('NAMSG_FUSED', 'maybe', r"NAMSG_FUSED='maybe': set it to auto, 0 or 1"),
    ('NAMSG_AGGREGATION_SIZE', 'abc', r"\$NAMSG_AGGREGATION_SIZE='abc' is not a number")])
def test_a_bad_namsg_variable_is_refused_before_any_run(workdir, monkeypatch, script, variable,
                                                        value, message):
    """The optimizers read these when they are made: the scripts trained every run of MXNet's
    own optimizers first (SGD, ADAM, ... in the default order) and then stopped at the first
    namsg optimizer with a traceback. Now an error line before the data is even read."""
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr(data, 'load_mnist_sample', lambda: pytest.fail('data loaded'))
    with pytest.raises(SystemExit, match='^error: .*' + message):
        if script == 'grid_search':
            _grid_search(monkeypatch).main(['--setting', 'mnist_logreg', '--methods', 'SGD'])
        else:
            cli.main(script.split('_')[1], ['--methods', 'SGD,ARSG'])
    assert _tree(workdir) == []


def test_demo_refuses_a_bad_namsg_variable_before_it_trains(monkeypatch, capsys):
    """make demo's script met $NAMSG_FUSED=maybe only when it made the optimizer, with a
    traceback; now it is an error line of its command line, as the other scripts give."""
    monkeypatch.setenv('NAMSG_FUSED', 'maybe')
    demo = _load_script('demo')
    monkeypatch.setattr(demo.gluon, 'Trainer', lambda *a, **k: pytest.fail('training started'))
    with pytest.raises(SystemExit) as stop:
        demo.main(['--epochs', '1', '--samples', '64'])
    assert stop.value.code == 2
    assert "error: NAMSG_FUSED='maybe': set it to auto, 0 or 1" in capsys.readouterr().err


def _grid_search(monkeypatch):
    """scripts/grid_search.py, loaded with its training blocked."""
    module = _load_script('grid_search')
    for name in ('run_grid', 'first_stage'):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail('training started'))
    return module


def _run_script(script, argv, monkeypatch):
    """Run reproduce_mnist, reproduce_cifar10 or grid_search (on the given data set) with argv."""
    experiment = 'cifar10' if 'cifar10' in script else 'mnist'
    if script.startswith('grid_search'):
        _grid_search(monkeypatch).main(
            ['--setting', 'cifar10_fine' if experiment == 'cifar10' else 'mnist_logreg'] + argv)
    else:
        cli.main(experiment, argv)


def _damaged_cifar(root):
    from test_data import write_cifar_python
    folder = write_cifar_python(root / 'cifar')
    (folder / 'data_batch_2').write_bytes(b'not a pickle')
    return folder


def _mnist_labels_above_9(root):
    _labels_above_9(root)
    return root / 'mnist'


def _mnist_swapped(root):
    from test_data import swap_mnist_splits
    (root / 'mnist').mkdir()
    _write_mnist(root / 'mnist', gz=False)
    swap_mnist_splits(root / 'mnist')
    return root / 'mnist'


def _empty_folder(root):
    (root / 'empty').mkdir()
    return root / 'empty'


# (data set, set-up returning the data folder, what the error says)
DATA_ERRORS = {
    'mnist, no such folder': ('mnist', lambda root: root / 'typo', 'does not exist'),
    'mnist, files missing': ('mnist', _empty_folder, 'MNIST files missing'),
    'mnist, labels above 9': ('mnist', _mnist_labels_above_9, 'labels up to 12'),
    'mnist, training and test files swapped': ('mnist', _mnist_swapped,
                                               'so the two are swapped; rename them'),
    'cifar10, no such folder': ('cifar10', lambda root: root / 'typo', 'does not exist'),
    'cifar10, no data': ('cifar10', _empty_folder, 'no CIFAR-10 data found'),
    'cifar10, damaged batch': ('cifar10', _damaged_cifar, 'data_batch_2: not a batch of'),
}


@pytest.mark.parametrize('origin', ['--data-dir', '$NAMSG_DATA_DIR'])
@pytest.mark.parametrize('script', ['reproduce', 'grid_search'])
@pytest.mark.parametrize('case', sorted(DATA_ERRORS))
def test_every_data_error_names_the_folder_and_where_its_path_came_from(
        workdir, monkeypatch, case, script, origin):
    """Only MNIST's missing folder said "(from $NAMSG_DATA_DIR)"; CIFAR-10's errors, and
    MNIST's once the folder existed, did not say where the path came from."""
    experiment, setup, says = DATA_ERRORS[case]
    folder = setup(workdir)
    if origin == '--data-dir':
        argv = ['--data-dir', str(folder)]
    else:
        monkeypatch.setenv('NAMSG_DATA_DIR', str(folder))
        argv = []
    listing = _tree(workdir)
    with pytest.raises(SystemExit) as stop:
        _run_script(script + '_' + experiment, argv, monkeypatch)
    message = str(stop.value)
    assert message.startswith('error: data folder %s (from %s)' % (folder, origin)), message
    assert says in message
    assert _tree(workdir) == listing


def _refuse_writes_in(folder, code, monkeypatch):
    """The system refusing files in ``folder`` with ``code``. Simulated: permission bits do not
    stop root, which runs these tests here, and a read-only mount needs privileges."""
    real = tempfile.TemporaryFile

    def probe(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise OSError(code, os.strerror(code), str(folder))
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(cli.tempfile, 'TemporaryFile', probe)


def _read_only(code):
    def setup(root, monkeypatch):
        (root / 'ro').mkdir()
        _refuse_writes_in(root / 'ro', code, monkeypatch)
    return setup


# (path, set-up, what the message says after "<flag> <path>: ")
OUTPUT_DIRS = {
    'in /proc': ('/proc/namsg', None, 'the directory cannot be created there: /proc is part '
                 'of a proc file system (the kernel\'s process information), which holds no '
                 'ordinary files'),
    'parent missing, in /proc': ('/proc/namsg/logs', None, 'the directory cannot be created '
                                 'there: /proc is part of a proc file system'),
    'in /sys': ('/sys/namsg', None, 'the directory cannot be created there: /sys is part of a '
                'sysfs file system (the kernel\'s device information)'),
    'a file in the way': ('afile/logs', lambda root, mp: _file_as_log_dir(root),
                          'the directory cannot be created there: afile is a file, not a '
                          'directory'),
    'a file of that name': ('afile', lambda root, mp: _file_as_log_dir(root),
                            'it is a file, not a directory'),
    'read-only parent': ('ro/logs', _read_only(errno.EROFS), 'the directory cannot be created '
                         'there: ro is on a read-only file system'),
    'parent missing, no permission': ('ro/a/logs', _read_only(errno.EACCES),
                                      'the directory cannot be created there: you have no '
                                      'permission to write in ro'),
    'existing, no permission': ('ro', _read_only(errno.EACCES), 'cannot write in it: you have '
                                'no permission to write in ro'),
}


@pytest.mark.parametrize('flag', ['--log-dir', '--checkpoint-dir'])
@pytest.mark.parametrize('script', ['reproduce_mnist', 'reproduce_cifar10', 'grid_search'])
@pytest.mark.parametrize('case', sorted(OUTPUT_DIRS))
def test_an_output_directory_that_cannot_be_made_says_why_in_plain_words(
        workdir, monkeypatch, case, script, flag):
    """`--log-dir /proc/x` said "cannot write in /proc (No such file or directory)", and
    grid_search.py did not check its directories at all before training."""
    path, setup, says = OUTPUT_DIRS[case]
    if setup is not None:
        setup(workdir, monkeypatch)
    listing = _tree(workdir)
    with pytest.raises(SystemExit) as stop:
        _run_script(script, [flag, path], monkeypatch)
    assert str(stop.value).startswith('error: %s %s: %s' % (flag, path, says)), stop.value
    assert str(stop.value).endswith('; choose a writable directory with %s' % flag)
    assert 'No such file or directory' not in str(stop.value)
    assert _tree(workdir) == listing


@pytest.mark.parametrize('kvstore,variable', [('dist_sync', 'DMLC_TASK_ID'),
                                              ('dist_sync', 'OMPI_COMM_WORLD_RANK'),
                                              ('horovod', 'HOROVOD_RANK')])
@pytest.mark.parametrize('source', ['unofficial files', 'embedded sample'])
def test_data_warnings_are_one_log_line_once_a_job(workdir, monkeypatch, caplog, capsys,
                                                   kvstore, variable, source):
    """Every worker of a job printed the checksum warnings (one a file, in Python's raw
    warnings format) and the sample notice; rank 0 logs each once."""
    monkeypatch.setattr(cli, 'train_run', lambda *a, **k: None)
    (workdir / 'site' / 'horovod').mkdir(parents=True)      # found, as where it is installed
    (workdir / 'site' / 'horovod' / '__init__.py').write_text('')
    monkeypatch.syspath_prepend(str(workdir / 'site'))
    monkeypatch.setenv('DMLC_NUM_WORKER', '2')
    monkeypatch.setenv('HOROVOD_SIZE', '2')
    argv = ['--kvstore', kvstore, '--settings', 'mnist_logreg', '--methods', 'arsg', '--seeds',
            '0']
    if source == 'unofficial files':
        (workdir / 'a').mkdir()
        _write_mnist(workdir / 'a', n_train=40, n_test=20, gz=True)
        argv += ['--data-dir', 'a']
    said = []
    for rank in (0, 1):
        monkeypatch.setenv(variable, str(rank))
        caplog.clear()
        with warnings.catch_warnings():
            warnings.simplefilter('error', UserWarning)
            cli.main('mnist', argv)
        said.append([r.getMessage() for r in caplog.records
                     if r.levelno >= logging.WARNING and r.name.startswith('namsg.experiments')])
        assert 'notice:' not in capsys.readouterr().err
    assert len(said[0]) == 1 and said[1] == [], said
    assert ('differ from the official release' if source == 'unofficial files'
            else 'embedded 5,000-image MNIST sample') in said[0][0]


def test_grid_search_names_its_flag(workdir, monkeypatch):
    with pytest.raises(SystemExit, match='error: --methods: unknown LAMB'):
        _grid_search(monkeypatch).main(['--methods', 'LAMB'])


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


def test_the_scale_that_arsgbs_boost_needs_is_the_one_for_every_setting():
    """--scale 0.01 with both CIFAR-10 settings moves the fine-mode boost (epoch 51) to epoch 1,
    and the fast-mode one (epoch 21) too: the hint names the bound for both (0.025). Before, it
    named fine mode's (0.01), and the scales it suggested were then refused for fast mode."""
    protocols = [cli.PROTOCOLS[s].scaled(0.01) for s in ('cifar10_fine', 'cifar10_fast')]
    with pytest.raises(SystemExit, match=r'in cifar10_fine \(of 1 epoch\) and cifar10_fast '
                                         r'\(of 1 epoch\); use --scale above 0.025,'):
        cli.check_boost(protocols, ['ARSGB'])
    cli.check_boost([cli.PROTOCOLS[s].scaled(0.026) for s in ('cifar10_fine', 'cifar10_fast')],
                    ['ARSGB'])
    with pytest.raises(SystemExit, match=r'in cifar10_fast .*use --scale above 0.025,'):
        cli.check_boost([cli.PROTOCOLS[s].scaled(0.015)
                         for s in ('cifar10_fine', 'cifar10_fast')], ['ARSGB'])


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


@pytest.mark.parametrize('script', sorted(p.stem for p in (ROOT / 'scripts').glob('*.py')))
def test_every_scripts_help_names_kebab_case_flags_with_their_defaults(script, monkeypatch,
                                                                       capsys):
    """demo.py's help dropped all but the first line of its description; the switches said
    "(default: False)"."""
    import argparse
    import ast
    import runpy
    parsers = []
    real = argparse.ArgumentParser.print_help
    monkeypatch.setattr(argparse.ArgumentParser, 'print_help',
                        lambda self, *a: parsers.append(self) or real(self, *a))
    monkeypatch.setattr(sys, 'argv', [str(ROOT / 'scripts' / (script + '.py')), '--help'])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(sys.argv[0], run_name='__main__')
    assert stop.value.code in (0, None)
    text = capsys.readouterr().out
    parser, = parsers
    assert text.startswith('usage: ') and '(default: False)' not in text
    words = ' '.join(text.split())
    assert parser.description and ' '.join(parser.description.split()) in words
    doc = ast.get_docstring(ast.parse((ROOT / 'scripts' / (script + '.py')).read_text()))
    if doc.split('\n')[0] == parser.description.split('\n')[0]:   # made from the docstring
        assert ' '.join(doc.split()) in words                           # all of it
    for action in parser._actions:
        if '-h' in action.option_strings:
            continue
        for flag in action.option_strings:
            assert re.fullmatch(r'--[a-z0-9]+(-[a-z0-9]+)*', flag), flag
        shown = parser._get_formatter()._get_help_string(action)
        assert '(default' in shown, '%s: %s' % (action.option_strings, shown)


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
    monkeypatch.setattr(prepare.Prepared, 'train_batches', lambda *a: pytest.fail('rerun'))
    out = _run(['--data-dir', str(tmp_path / 'b')], capsys)
    assert 'mnist_logreg/ARSG/seed0: finished earlier (1 epochs in' in out

    _write_mnist(tmp_path / 'c', n_train=40, n_test=20, gz=False, seed=1)   # other data
    log = tmp_path / 'runs' / 'mnist' / 'mnist_logreg' / 'ARSG' / 'seed0.jsonl'
    before = log.read_text()
    with pytest.raises(SystemExit, match=r'error: log .*seed0.jsonl was written by another '
                                         r'configuration of this run \(other data: '):
        _run(['--data-dir', 'c'], capsys)
    assert log.read_text() == before


def test_a_run_made_on_other_data_says_so_and_how_to_keep_both(tmp_path, monkeypatch, capsys):
    """The same command on other data than a run's (here: another copy of MNIST; in the report,
    the embedded sample after a full-data run): the message says the data differ, in words, with
    where this command reads it, and how to keep both runs. Before, it printed the two data
    dicts and advised removing the checkpoint, which only met the log's refusal next."""
    monkeypatch.chdir(tmp_path)
    for name, seed in (('a', 0), ('c', 1)):
        (tmp_path / name).mkdir()
        _write_mnist(tmp_path / name, n_train=40, n_test=20, gz=False, seed=seed)
    _run(['--data-dir', 'a'], capsys)
    run_dir = tmp_path / 'runs' / 'mnist'
    before = sorted((p, p.read_bytes()) for p in run_dir.rglob('*') if p.is_file())
    with pytest.raises(SystemExit) as refused:
        _run(['--data-dir', 'c'], capsys)
    message = str(refused.value)
    assert re.search(r'checkpoint .*epoch-0001 was made by another configuration of this run '
                     r'\(other data: 40 training / 20 validation images, digest \w+ then; 40 '
                     r'training / 20 validation images, digest \w+ now, from MNIST files in c '
                     r'\(give the --data-dir it was trained on to resume it\)\)\. Its files are '
                     r'kept: to train this configuration, choose another --log-dir and '
                     r'--checkpoint-dir, or move the log .*seed0.jsonl and the checkpoints in '
                     r'.*seed0 away', message), message
    assert 'remove' not in message
    assert sorted((p, p.read_bytes()) for p in run_dir.rglob('*') if p.is_file()) == before
    out = _run(['--data-dir', 'c', '--log-dir', 'other', '--checkpoint-dir', 'other/ck'], capsys)
    assert 'mnist_logreg/ARSG/seed0 epoch 1:' in out


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


def _mnist_folder(root):
    (root / 'a').mkdir()
    _write_mnist(root / 'a', n_train=40, n_test=20, gz=False)
    return root / 'a'


def _cifar_folder(root):
    from test_data import write_cifar_python
    return write_cifar_python(root / 'a')


# Two epochs of SGD on each data set: (flags, set-up returning the data folder).
TWO_EPOCHS = {'mnist': (['--settings', 'mnist_logreg', '--scale', '0.1'], _mnist_folder),
              'cifar10': (['--settings', 'cifar10_fine', '--scale', '0.025'], _cifar_folder)}


def _run_files(experiment):
    """(log, checkpoint folder) of TWO_EPOCHS[experiment]'s run, from the working directory."""
    name = '%s/SGD/seed0' % TWO_EPOCHS[experiment][0][1]
    run = Path('runs') / experiment
    return run / (name + '.jsonl'), run / 'checkpoints' / name


def _two_epochs(experiment, root, monkeypatch, interrupt_at=None):
    """Run TWO_EPOCHS[experiment] in ``root``, the working directory (its data written on the
    first call), with Ctrl-C as epoch ``interrupt_at`` begins."""
    flags, setup = TWO_EPOCHS[experiment]
    folder = root / 'a' if (root / 'a').exists() else setup(root)
    original, calls = prepare.Prepared.train_batches, []

    def batches(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)
    monkeypatch.setattr(prepare.Prepared, 'train_batches', batches)
    try:
        cli.main(experiment, flags + ['--methods', 'sgd', '--seeds', '0', '--no-progress',
                                      '--data-dir', str(folder)])
    finally:
        monkeypatch.setattr(prepare.Prepared, 'train_batches', original)


@pytest.mark.parametrize('experiment', sorted(TWO_EPOCHS))
def test_ctrl_c_says_what_the_same_command_does(tmp_path, monkeypatch, capsys, experiment):
    """Ctrl-C ended in a KeyboardInterrupt traceback from inside an MXNet op; then, in the
    first epoch, promised a resume "from its last complete epoch (checkpoints in ...)" where
    there was none."""
    monkeypatch.chdir(tmp_path)
    run = '%s/SGD/seed0' % TWO_EPOCHS[experiment][0][1]
    with pytest.raises(SystemExit) as stop:
        _two_epochs(experiment, tmp_path, monkeypatch, interrupt_at=1)
    assert stop.value.code == 130
    assert capsys.readouterr().out.splitlines()[-1] == (
        'interrupted: %s stopped in an epoch; no epoch was complete: the same command starts '
        'it again from the beginning' % run)
    # Nothing was written, and the folders made for the run's files are gone (they were left
    # empty: runs/<experiment>/<setting>/SGD/ and .../checkpoints/<setting>/SGD/).
    assert not (tmp_path / 'runs').exists()
    with pytest.raises(SystemExit):
        _two_epochs(experiment, tmp_path, monkeypatch, interrupt_at=2)
    assert capsys.readouterr().out.splitlines()[-1] == (
        'interrupted: %s stopped in an epoch; the same command resumes it from its last '
        'complete epoch (checkpoint %s)' % (run, _run_files(experiment)[1] / 'epoch-0001'))


@pytest.mark.parametrize('kvstore', ['dist_sync', 'dist_device_sync', 'dist_async'])
@pytest.mark.parametrize('flags,count', [
    (['--methods', 'ARSG,SGD'], '2 (1 of --settings, 2 of --methods, 1 of --seeds)'),
    (['--methods', 'ARSG', '--seeds', '0,1'], '2 (1 of --settings, 1 of --methods, 2 of --seeds)'),
    (['--methods', 'ARSG', '--settings', 'mnist_logreg,mnist_cnn'],
     '2 (2 of --settings, 1 of --methods, 1 of --seeds)')])
def test_a_parameter_server_job_of_several_runs_is_refused_before_any_work(workdir, monkeypatch,
                                                                          kvstore, flags, count):
    """Each run created a store of its own: in a dist_* job the second waited for ever, so the
    job trained its first run and hung until namsg_dist's --timeout ended it (status 124)."""
    monkeypatch.setattr(data, 'load_mnist_sample', lambda: pytest.fail('data loaded'))
    argv = ['--kvstore', kvstore, '--settings', 'mnist_logreg', '--seeds', '0'] + flags
    with pytest.raises(SystemExit, match=r'^error: --kvstore %s: a parameter-server job trains '
                                         r'one run .* this command has %s: give one of each'
                                         % (kvstore, re.escape(count))):
        cli.main('mnist', argv)
    assert _tree(workdir) == []
    cli.check_one_run_per_job(kvstore, ['mnist_logreg'], ['ARSG'], [0])
    cli.check_one_run_per_job('device', ['mnist_logreg'], ['ARSG', 'SGD'], [0, 1])


@pytest.mark.parametrize('script', ['reproduce_mnist', 'reproduce_cifar10', 'grid_search'])
def test_ctrl_c_while_the_runs_are_checked_is_one_line(tmp_path, monkeypatch, capsys, script):
    """Ctrl-C after the data was prepared, while every run's log and checkpoints were read
    before the first run trained, ended in a KeyboardInterrupt traceback."""
    monkeypatch.chdir(tmp_path)
    folder = TWO_EPOCHS['cifar10' if 'cifar10' in script else 'mnist'][1](tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    argv = ['--data-dir', str(folder), '--methods', 'SGD']
    if script == 'grid_search':
        module = _grid_search(monkeypatch)
        monkeypatch.setattr(module, 'check_grid', interrupted)
        run = lambda: module.main(['--setting', 'mnist_logreg'] + argv)   # noqa: E731
    else:
        monkeypatch.setattr(cli, 'check_run', interrupted)
        run = lambda: cli.main(script.split('_')[1], argv)   # noqa: E731
    listing = _tree(tmp_path)
    with pytest.raises(SystemExit) as stop:
        try:
            run()
        except KeyboardInterrupt:
            pytest.fail('a KeyboardInterrupt traceback')
    assert stop.value.code == 130
    assert capsys.readouterr().out.splitlines()[-1] == (
        'interrupted before the first %s: nothing was written; the same command starts again'
        % ('point' if script == 'grid_search' else 'run'))
    assert _tree(tmp_path) == listing


@pytest.mark.parametrize('experiment', sorted(TWO_EPOCHS))
def test_sigterm_while_the_report_is_drawn_says_how_to_draw_it(tmp_path, monkeypatch, capsys,
                                                               experiment):
    """SIGTERM or Ctrl-C while the plots were drawn after the last run ended in a
    KeyboardInterrupt traceback, not saying that the runs were done or how to draw the plots.
    The command it names runs as given where a folder's path holds a space (CI's clone does)."""
    import shlex
    monkeypatch.chdir(tmp_path)
    references = [tmp_path / 'reference runs', tmp_path / 'more']
    for folder in references:
        folder.mkdir()
    monkeypatch.setattr(cli, 'reference_dirs', lambda experiment, kvstore: references)

    def interrupted(*args, **kwargs):
        raise cli.Terminated
    monkeypatch.setattr(cli, 'write_report', interrupted)
    with pytest.raises(SystemExit) as stop:
        try:
            _two_epochs(experiment, tmp_path, monkeypatch)
        except KeyboardInterrupt:
            pytest.fail('a KeyboardInterrupt traceback')
    assert stop.value.code == 143
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith('interrupted while drawing the report: the runs are done and logged')
    command = line.split('draw them with ')[1]
    assert shlex.split(command)[:4] == ['python', 'scripts/plot_results.py', '--log-dir',
                                        'runs/%s' % experiment]
    assert shlex.split(command)[4:] == ['--reference', str(references[0]),
                                        '--reference', str(references[1])]
    assert not (tmp_path / 'runs' / experiment / 'summary.md').exists()
    _load_script('plot_results').main(shlex.split(command)[2:])
    assert (tmp_path / 'runs' / experiment / 'summary.md').is_file()


# Another process, running the command of argv[4:], paused as epoch argv[3] begins (it makes
# the file argv[1]) until the file argv[2] exists.
_PAUSED = r"""
import os, sys, time
from namsg.experiments import cli, data, prepare
data.MNIST_SIZES.update(train=40, test=20)      # those of _mnist_folder's files
original, epochs = prepare.Prepared.train_batches, []
def batches(self, *args, **kwargs):
    epochs.append(1)
    if len(epochs) == int(sys.argv[3]):
        open(sys.argv[1], 'w').close()
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.02)
    return original(self, *args, **kwargs)
prepare.Prepared.train_batches = batches
cli.main('mnist', sys.argv[4:])
"""


def _paused(root, epoch, flags):
    """(process, go): _PAUSED running ``flags`` in ``root``, already paused as ``epoch``
    begins; making the file ``go`` lets it go on."""
    import subprocess
    started, go = root / 'started', root / 'go'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    process = subprocess.Popen([sys.executable, '-c', _PAUSED, str(started), str(go),
                                str(epoch)] + flags, env=env, cwd=str(root),
                               stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not started.exists():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail('the other process failed: %s' % process.communicate()[0])
        time.sleep(0.05)
    return process, go


@pytest.mark.parametrize('note', ['threads: MXNet will run its operators on ...', None])
def test_the_cores_mxnet_would_leave_idle_are_said_before_training(tmp_path, monkeypatch, note):
    folder = _mnist_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, 'idle_cores_note', lambda: note)
    lines = []
    monkeypatch.setattr(cli, '_echo', lines.append)
    cli.main('mnist', ['--settings', 'mnist_logreg', '--scale', '0.1', '--seeds', '0',
                       '--methods', 'SGD', '--no-progress', '--data-dir', str(folder)])
    assert lines[0].startswith('data: ')
    assert lines[1].startswith('mnist_logreg/SGD/seed0 epoch 1') if note is None else \
        lines[1] == note


def test_two_processes_share_out_their_runs_and_never_train_one_at_once(tmp_path, monkeypatch):
    """Processes started with overlapping runs (the same command twice; --settings a,b beside
    --settings b) trained the runs they shared at once, each rewriting the other's log and
    checkpoints. Now each trains the runs no other holds, then waits for the others'."""
    import socket
    folder = _mnist_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    flags = ['--settings', 'mnist_logreg', '--scale', '0.1', '--seeds', '0', '--no-progress',
             '--data-dir', str(folder)]
    other, go = _paused(tmp_path, 1, flags + ['--methods', 'SGD'])
    try:
        lines = []

        def echo(line):
            lines.append(line)
            if 'waiting for' in line:
                go.touch()          # the other process trains its epochs now
        monkeypatch.setattr(cli, '_echo', echo)
        cli.main('mnist', flags + ['--methods', 'SGD,ADAM'])
    finally:
        go.touch()
        out = other.communicate(timeout=120)[0]
    assert other.returncode == 0, out
    log = Path('runs/mnist/mnist_logreg/SGD/seed0.jsonl')
    lines = [line for line in lines if not line.startswith('threads: ')]   # the machine's
    assert lines[1:] == [
        'mnist_logreg/SGD/seed0 is being trained by another process, pid %d on %s (it holds '
        'the lock on %s): put off until the other runs are done'
        % (other.pid, socket.gethostname(), log)] + [
        line for line in lines if line.startswith('mnist_logreg/ADAM/seed0 epoch')] + [
        'mnist_logreg/SGD/seed0: waiting for pid %d on %s to finish or stop it'
        % (other.pid, socket.gethostname()),
        'mnist_logreg/SGD/seed0: finished earlier (%s): skipped'
        % Path('runs/mnist/checkpoints/mnist_logreg/SGD/seed0/epoch-0002')], lines
    assert 'mnist_logreg/SGD/seed0 epoch 2:' in out
    header, records = read_log(log)
    assert len(records) == 2 and '--methods SGD' in header['command']      # the other's
    assert list(tmp_path.rglob('.*.lock')) == []


def test_stopping_a_process_that_waits_for_another_says_that_one_goes_on(tmp_path,
                                                                         monkeypatch):
    """The second copy of a command, waiting for the first (which trains the run), printed on
    SIGTERM or Ctrl-C "...stopped (waiting for another process, or in an epoch); no epoch was
    complete: the same command starts it again from the beginning", as if the other's work
    were lost."""
    import signal
    import socket
    folder = _mnist_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    flags = ['--settings', 'mnist_logreg', '--scale', '0.1', '--methods', 'SGD', '--seeds', '0',
             '--no-progress', '--data-dir', str(folder)]
    other, go = _paused(tmp_path, 1, flags)         # holds the run, in its epoch 1
    lines = []

    def echo(line):
        lines.append(line)
        if line.startswith('mnist_logreg/SGD/seed0: waiting for'):     # SIGTERM in the wait
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    monkeypatch.setattr(cli, '_echo', echo)
    try:
        with pytest.raises(SystemExit) as stop:
            cli.main('mnist', flags)
    finally:
        go.touch()
        out = other.communicate(timeout=120)[0]
    assert stop.value.code == 128 + signal.SIGTERM
    assert lines[-1] == (
        'interrupted: mnist_logreg/SGD/seed0 stopped while waiting for pid %d on %s, which '
        'holds the run: this process trained nothing of it, and that process goes on with it'
        % (other.pid, socket.gethostname())), lines
    assert other.returncode == 0 and 'mnist_logreg/SGD/seed0 epoch 2:' in out, out
    assert len(read_log(Path('runs/mnist/mnist_logreg/SGD/seed0.jsonl'))[1]) == 2
    assert list(tmp_path.rglob('.*.lock')) == []


def test_processes_stopped_before_their_first_epoch_leave_no_folders_in_a_new_log_dir(
        tmp_path):
    """Two processes with other runs (--methods SGD, --methods ADAM) in one new --log-dir, both
    stopped by SIGTERM before their first epoch, left <log dir>/mnist_logreg/ and
    <log dir>/checkpoints/mnist_logreg/ empty; one process alone removed the whole log dir."""
    import signal
    folder = _mnist_folder(tmp_path)
    (tmp_path / 'there').mkdir()            # not made by the runs: kept
    log_dir = tmp_path / 'there' / 'new' / 'runs'
    flags = ['--settings', 'mnist_logreg', '--scale', '0.1', '--seeds', '0', '--no-progress',
             '--data-dir', str(folder), '--log-dir', str(log_dir)]
    processes = []
    for method in ('SGD', 'ADAM'):          # the first has made the log dir as the second starts
        (tmp_path / method).mkdir()
        processes.append(_paused(tmp_path / method, 1, flags + ['--methods', method])[0])
    assert (log_dir / 'mnist_logreg' / 'SGD').is_dir() and (log_dir / 'mnist_logreg' /
                                                            'ADAM').is_dir()
    for process in processes:               # the first out could not remove the shared folders
        process.send_signal(signal.SIGTERM)
        out = process.communicate(timeout=120)[0]
        assert process.returncode == 128 + signal.SIGTERM, out
        assert 'no epoch was complete' in out.splitlines()[-1], out
    assert list((tmp_path / 'there').iterdir()) == []


def test_sigterm_stops_as_ctrl_c_does(tmp_path, monkeypatch, capsys):
    """SIGTERM (kill, timeout, a batch scheduler's time limit) ended the process at once,
    without a word, leaving its runs' lock files behind."""
    import signal
    folder = _mnist_folder(tmp_path)
    flags = ['--settings', 'mnist_logreg', '--scale', '0.1', '--methods', 'SGD', '--seeds', '0',
             '--no-progress', '--data-dir', str(folder)]
    process, _ = _paused(tmp_path, 2, flags)       # epoch 1 done, paused in epoch 2
    process.send_signal(signal.SIGTERM)
    out = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, out
    assert out.splitlines()[-1] == (
        'interrupted: mnist_logreg/SGD/seed0 stopped in an epoch; the same command resumes it '
        'from its last complete epoch (checkpoint %s)'
        % Path('runs/mnist/checkpoints/mnist_logreg/SGD/seed0/epoch-0001')), out
    assert list(tmp_path.rglob('.*.lock')) == []
    monkeypatch.chdir(tmp_path)
    cli.main('mnist', flags)
    assert 'mnist_logreg/SGD/seed0: resuming from' in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL       # as it was


def _waiting(*args, **kwargs):
    from namsg.experiments.locks import WaitInterrupted
    raise WaitInterrupted('mnist_logreg/SGD/seed0', 'pid 12 on host', cli.Terminated())


def _terminated(*args, **kwargs):
    raise cli.Terminated()


@pytest.mark.parametrize('where,says', [
    ('in a point', 'interrupted: the same command skips the finished points and resumes the '
                   'interrupted one from its last complete epoch'),
    # It said it "resumes the interrupted one", though it had trained nothing of that point.
    ('waiting for another process', 'interrupted: mnist_logreg/SGD/seed0 stopped while waiting '
                                    'for pid 12 on host, which holds the run: this process '
                                    'trained nothing of it, and that process goes on with it')])
def test_sigterm_stops_a_grid_search_as_ctrl_c_does(tmp_path, monkeypatch, capsys, where, says):
    import signal
    module = _load_script('grid_search')
    monkeypatch.setattr(module, 'run_grid', _terminated if where == 'in a point' else _waiting)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        module.main(['--methods', 'SGD', '--epochs', '1', '--data-dir',
                     str(_mnist_folder(tmp_path))])
    assert stop.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().out.splitlines()[-1] == says


def test_ctrl_c_in_a_dist_job_says_its_log_must_be_moved_away(tmp_path):
    """A dist_* job keeps no checkpoint: "the same command resumes it" was wrong."""
    log = tmp_path / 'seed0.jsonl'
    assert cli._after_interrupt(True, log, tmp_path / 'ck') == (
        'no epoch was complete: the same command starts it again from the beginning')
    log.write_text('{}')
    assert cli._after_interrupt(True, log, tmp_path / 'ck') == (
        'a dist_* job keeps no checkpoint, so it cannot resume: move its log %s away and the '
        'same command starts it again from the beginning' % log)


@pytest.mark.parametrize('experiment', sorted(TWO_EPOCHS))
def test_a_damaged_checkpoint_is_an_error_before_any_training(tmp_path, monkeypatch, capsys,
                                                             experiment):
    """A checkpoint file cut short gave "resuming from ..." and then a traceback."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        _two_epochs(experiment, tmp_path, monkeypatch, interrupt_at=2)
    log, checkpoints = _run_files(experiment)
    states = checkpoints / 'epoch-0001' / 'trainer.states'
    states.write_bytes(states.read_bytes()[:100])
    before = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
    capsys.readouterr()
    monkeypatch.setattr(cli, 'train_run', lambda *a, **k: pytest.fail('training started'))
    with pytest.raises(SystemExit, match=r'^error: checkpoint %s is damaged: %s cannot be read '
                                         r'\(UnpicklingError: .*\); restore the checkpoint '
                                         r'folder from a copy to resume, or move %s and the log '
                                         r'%s away' % tuple(map(re.escape, map(str, (
                                             checkpoints / 'epoch-0001', states, checkpoints,
                                             log))))):
        _two_epochs(experiment, tmp_path, monkeypatch)
    assert capsys.readouterr().out == ''
    assert {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()} == before


def test_the_reference_is_found_from_any_working_directory(tmp_path, monkeypatch, capsys):
    """Run from outside the checkout, the comparison with logs/mnist was dropped without a
    word."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a').mkdir()
    _write_mnist(tmp_path / 'a', n_train=40, n_test=20, gz=False)
    out = _run(['--data-dir', 'a'], capsys)
    # Named from the checkout, not by a path of this machine (the report may be committed).
    assert 'No reference runs of the same protocol in `logs/mnist`' in out


def test_the_reference_folders_are_those_of_the_experiment_and_its_kind(tmp_path,
                                                                     monkeypatch):
    """Only logs/<experiment> was looked in: the CIFAR-10 runs of B.3's network, committed in
    logs/cifar10-full/ and logs/cifar10-b3-scale0.125/, were never compared with."""
    monkeypatch.chdir(tmp_path)
    for name in ('cifar10', 'cifar10-full', 'cifar10-b3-scale0.125', 'cifar10-dist',
                 'cifar10-dist-full', 'cifar10-horovod', 'cifar10-sample', 'cifar100', 'mnist',
                 'mnist-dist', 'mnist-horovod', 'mnist-sample', 'grid'):
        (tmp_path / 'logs' / name).mkdir(parents=True)
    (tmp_path / 'logs' / 'cifar10-notes.md').write_text('')          # a file, not a folder

    def found(experiment, kvstore):
        return [str(folder) for folder in cli.reference_dirs(experiment, kvstore)]
    assert found('cifar10', 'device') == ['logs/cifar10', 'logs/cifar10-b3-scale0.125',
                                          'logs/cifar10-full']
    assert found('cifar10', 'local') == found('cifar10', 'device')
    assert found('cifar10', 'dist_sync') == ['logs/cifar10-dist', 'logs/cifar10-dist-full']
    assert found('cifar10', 'horovod') == ['logs/cifar10-horovod']
    assert found('mnist', 'device') == ['logs/mnist']
    assert found('mnist', 'dist_async') == ['logs/mnist-dist']
    # The working directory's logs/ holds none of this kind: the checkout's are found.
    assert found('mnist', 'horovod') == ['logs/mnist-horovod']
    (tmp_path / 'logs' / 'mnist-horovod').rmdir()
    assert cli.reference_dirs('mnist', 'horovod') == [ROOT / 'logs' / 'mnist-horovod']
    # From the checkout: B.3's committed CIFAR-10 runs are among them.
    monkeypatch.chdir(tmp_path / 'logs' / 'grid')
    assert {ROOT / 'logs' / 'cifar10-full', ROOT / 'logs' / 'cifar10-b3-scale0.125'} <= set(
        cli.reference_dirs('cifar10', 'device'))


def _cifar10(argv, folder, capsys):
    """reproduce_cifar10.py on the small CIFAR-10 in ``folder``: one epoch of SGD, fine mode."""
    cli.main('cifar10', ['--settings', 'cifar10_fine', '--methods', 'sgd', '--scale', '0.0125',
                         '--no-progress', '--data-dir', str(folder)] + argv)
    return capsys.readouterr().out


def test_a_cifar10_run_is_compared_with_the_reference_of_its_network_and_budget(
        tmp_path, monkeypatch, capsys):
    """The report compared a CIFAR-10 run with logs/cifar10 alone, whose runs are of GluonCV's
    network at --scale 0.0375, and always ended "No reference runs of the same protocol in
    logs/cifar10."; B.3's runs of the same protocol in another folder were never found."""
    monkeypatch.chdir(tmp_path)
    folder = _cifar_folder(tmp_path)
    _cifar10(['--log-dir', 'logs/cifar10-b3-short'], folder, capsys)     # the reference
    (tmp_path / 'logs' / 'cifar10').mkdir()
    out = _cifar10([], folder, capsys)
    assert 'Reference runs of the same protocol in `logs/cifar10-b3-short`' in out
    assert '| SGD | 0 |' in out.split('The same runs here and in the reference')[1]
    # A job's runs are not a single process's reference, however many.
    shutil.move(str(tmp_path / 'logs' / 'cifar10-b3-short'), str(tmp_path / 'logs' /
                                                                  'cifar10-dist'))
    out = _cifar10(['--log-dir', 'runs/again'], folder, capsys)
    assert 'Reference runs of the same protocol' not in out
    assert 'No reference runs of the same protocol in `logs/cifar10`: no finished runs of ' \
        'cifar10_fine there.' in out


def test_cifar10_takes_gluoncvs_network_and_compares_with_its_older_logs(tmp_path, monkeypatch,
                                                                         capsys):
    """The docs said GluonCV's network "stays available as cifar_resnet20_v1 to rerun" the logs
    it made, but reproduce_cifar10.py had no flag for it ("unrecognized arguments"); and those
    logs name it 'resnet20', so a rerun must be taken as of their protocol."""
    monkeypatch.chdir(tmp_path)
    folder = _cifar_folder(tmp_path)
    _cifar10(['--model', 'cifar_resnet20_v1', '--log-dir', 'logs/cifar10-gluoncv'], folder,
             capsys)
    log = tmp_path / 'logs' / 'cifar10-gluoncv' / 'cifar10_fine' / 'SGD' / 'seed0.jsonl'
    header, records = read_log(log)
    assert header['protocol']['model'] == 'cifar_resnet20_v1' and len(records) == 1
    # As the logs made before B.3's network was built name it.
    log.write_text(log.read_text().replace('"model": "cifar_resnet20_v1"', '"model": "resnet20"',
                                           1))
    assert read_log(log)[0]['protocol']['model'] == 'resnet20'
    out = _cifar10(['--model', 'cifar_resnet20_v1'], folder, capsys)
    assert 'Reference runs of the same protocol in `logs/cifar10-gluoncv`' in out
    assert '| SGD | 0 |' in out.split('The same runs here and in the reference')[1]
    out = _cifar10(['--log-dir', 'runs/b3'], folder, capsys)             # B.3's, the default
    assert read_log(tmp_path / 'runs' / 'b3' / 'cifar10_fine' / 'SGD' / 'seed0.jsonl')[0][
        'protocol']['model'] == 'resnet20_b3'
    assert ('No reference runs of the same protocol in `logs/cifar10-gluoncv`: model '
            'cifar_resnet20_v1 (logged as resnet20) there, resnet20_b3 here.') in out


def test_a_run_is_not_resumed_or_skipped_with_another_model(tmp_path, monkeypatch, capsys):
    """--model is part of the run's configuration (its header's protocol): a run begun or
    finished with one network is refused with the other, its files kept."""
    monkeypatch.chdir(tmp_path)
    folder = _cifar_folder(tmp_path)
    argv = ['--settings', 'cifar10_fine', '--methods', 'sgd', '--seeds', '0', '--scale',
            '0.025', '--no-progress', '--data-dir', str(folder)]
    original, calls = prepare.Prepared.train_batches, []

    def second_epoch_interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)
    monkeypatch.setattr(prepare.Prepared, 'train_batches', second_epoch_interrupted)
    with pytest.raises(SystemExit):
        cli.main('cifar10', argv)
    monkeypatch.setattr(prepare.Prepared, 'train_batches', original)
    log, checkpoints = _run_files('cifar10')

    def refused(model, made, then):
        files = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
        with pytest.raises(SystemExit, match=r"^error: %s by another configuration of this run "
                                             r"\(protocol.model: '%s' then, '%s' now\)"
                                             % (re.escape(made), then, model)):
            cli.main('cifar10', argv + ['--model', model])
        assert {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()} == files
    # Begun with B.3's network (the default): its checkpoint refuses GluonCV's.
    refused('cifar_resnet20_v1', 'checkpoint %s was made' % (checkpoints / 'epoch-0001'),
            'resnet20_b3')
    # Finished with GluonCV's (the checkpoints removed): its log refuses B.3's.
    shutil.rmtree(tmp_path / 'runs')
    cli.main('cifar10', argv + ['--model', 'cifar_resnet20_v1'])
    shutil.rmtree(checkpoints)
    refused('resnet20_b3', 'log %s was written' % log, 'cifar_resnet20_v1')


def test_model_flag_states_its_choices_and_names_an_older_logs_name(workdir, capsys):
    text = ' '.join(cli.build_parser('cifar10').format_help().split())
    assert '--model {resnet20_b3,cifar_resnet20_v1}' in text
    assert 'logs name it resnet20) (default: resnet20_b3)' in text
    assert '--model' not in cli.build_parser('mnist').format_help()
    for value, says in (('resnet20', "argument --model: 'resnet20' is what logs of earlier "
                                     "versions call cifar_resnet20_v1: give --model "
                                     "cifar_resnet20_v1"),
                        ('resnet56', "argument --model: invalid choice: 'resnet56' (choose "
                                     "from 'resnet20_b3', 'cifar_resnet20_v1')")):
        with pytest.raises(SystemExit):
            cli.main('cifar10', ['--model', value])
        assert says in capsys.readouterr().err
    assert _tree(workdir) == []


def test_grid_search_names_a_damaged_log_and_says_how_to_resume(workdir, monkeypatch, capsys):
    """A damaged log of a grid point, or Ctrl-C, ended grid_search.py in a traceback."""
    from namsg.experiments.grid import tuple_name
    from namsg.experiments.hparams import grid_tuples
    module = _load_script('grid_search')
    log = (workdir / 'runs' / 'grid-sample' / 'logs' / 'mnist_logreg' / 'SGD' /
           (tuple_name('SGD', grid_tuples('SGD')[0]) + '.jsonl'))
    log.parent.mkdir(parents=True)
    log.write_text('{"type": "header", "run": "x"}\n{"type": "epo')
    monkeypatch.setattr(prepare.Prepared, 'train_batches', lambda *a: pytest.fail('training'))
    with pytest.raises(SystemExit, match=r'error: .*\.jsonl: line 2 is not a complete JSON '
                                         r'record.*move the log away'):
        module.main(['--methods', 'SGD', '--epochs', '1'])
    assert log.read_text() == '{"type": "header", "run": "x"}\n{"type": "epo'

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    log.unlink()        # else every point's log is checked, and this one refused, first
    monkeypatch.setattr(module, 'run_grid', interrupted)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        module.main(['--methods', 'SGD', '--epochs', '1'])
    assert stop.value.code == 130
    assert 'interrupted: the same command skips the finished points and resumes' in \
        capsys.readouterr().out


@pytest.mark.parametrize('step', ['load', 'prepare'])
@pytest.mark.parametrize('script', ['reproduce_mnist', 'reproduce_cifar10', 'grid_search'])
def test_ctrl_c_while_the_data_loads_is_one_line(workdir, monkeypatch, capsys, script, step):
    """Ctrl-C during the data's download or decoding, or its preparation for training (CIFAR-10's
    normalisation takes seconds), ended in a KeyboardInterrupt traceback."""
    (workdir / 'd').mkdir()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    if step == 'load':
        for name in ('load_mnist', 'load_cifar10'):
            monkeypatch.setattr(data, name, interrupted)
    else:
        monkeypatch.setattr(data, 'load_mnist', lambda *a, **k: None)
        monkeypatch.setattr(data, 'load_cifar10', lambda *a, **k: None)
        monkeypatch.setitem(prepare.PREPARE, 'mnist', interrupted)
        monkeypatch.setitem(prepare.PREPARE, 'cifar10', interrupted)
    with pytest.raises(SystemExit) as stop:
        try:
            _run_script(script, ['--data-dir', 'd'], monkeypatch)
        except KeyboardInterrupt:
            pytest.fail('a KeyboardInterrupt traceback')
    assert stop.value.code == 130
    assert capsys.readouterr().out == ('interrupted while loading the data; nothing was '
                                       'written (files already downloaded are kept); the same '
                                       'command starts again\n')
    assert _tree(workdir) == ['d']


def test_gpus_are_checked_where_cuda_has_no_driver(workdir, monkeypatch):
    """A CUDA build of MXNet on a machine without a driver raises when asked for its GPUs."""
    def no_driver():
        raise cli.mx.base.MXNetError('CUDA: CUDA driver version is insufficient')
    monkeypatch.setattr(cli.mx.context, 'num_gpus', no_driver)
    with pytest.raises(SystemExit, match='error: --gpus 0: no GPU 0; MXNet sees 0 GPUs here'):
        cli.main('mnist', ['--gpus', '0'])


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
    header, records = read_log(tmp_path / 'runs' / 'mnist-sample' / 'mnist_logreg' / 'ARSG' /
                               'seed0.jsonl')
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


def test_a_damaged_log_of_another_run_stops_only_the_report_with_an_error(tmp_path,
                                                                          monkeypatch, capsys):
    """The runs train and log; a damaged log of another run in the log folder ended the script
    with a LogError traceback from the report."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a').mkdir()
    _write_mnist(tmp_path / 'a', n_train=40, n_test=20, gz=False)
    other = tmp_path / 'runs' / 'mnist' / 'mnist_logreg' / 'SGD' / 'seed3.jsonl'
    other.parent.mkdir(parents=True)
    other.write_text('{"type": "header", "run": "mnist_logreg/SGD/seed3"\n')     # cut short
    with pytest.raises(SystemExit) as stop:
        _run(['--data-dir', 'a'], capsys)
    message = str(stop.value.code)
    assert message.startswith('error: the runs are done, but the report cannot be drawn: ')
    assert str(other.relative_to(tmp_path)) in message and 'plot_results.py --log-dir' in message
    assert (tmp_path / 'runs' / 'mnist' / 'mnist_logreg' / 'ARSG' / 'seed0.jsonl').is_file()
