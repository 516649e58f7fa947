"""The troubleshooting page's catalogue stays true to the code: representative errors and
warnings, triggered in-process as a user meets them, each match a message quoted on the page.

The page (docs/troubleshooting.md) quotes each message in a ```text block as it is printed, one
message a line (a long one continued on indented lines): words in capitals stand for what
varies (PLACEHOLDERS) and ``...`` for a part left out. A message here must match one of those
quotes, with the placeholders and ``...`` as wildcards, so a message reworded in the code, or a
quote reworded away from the code, fails.
"""

import contextlib
import importlib.util
import io
import logging
import re
import sys
import threading
import types
import warnings
from pathlib import Path
from unittest import mock

import mxnet as mx
import pytest
from mxnet import autograd, gluon

import namsg
import namsg_dist
from namsg import horovod_store, kernels, kvstore_sync, reference
from namsg.boost import ObservationBoost, search_step_size
from namsg.horovod_store import Horovod

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / 'docs' / 'troubleshooting.md'
#: The words the page uses for the variable parts of a message (its introduction lists them).
PLACEHOLDERS = ('NAME', 'VALUE', 'N', 'FILE', 'FOLDER', 'OPTIMIZER', 'RUN', 'REASON', 'LIST',
                'RANGE', 'TYPE', 'SHAPE', 'INDEX', 'VERSION', 'HOST', 'FLAG', 'DIFFERENCES',
                'URL')
#: Literal characters a quoted line must keep besides its wildcards, so that no line matches
#: nearly anything.
LEAST_FIXED = 15
_TOKEN = re.compile(r'(\s*\.\.\.\s*|\b(?:%s)\b)' % '|'.join(PLACEHOLDERS))
_TEXT_BLOCK = re.compile(r'^```text\n(.*?)^```', re.M | re.S)


def quoted_messages():
    """Every message quoted on the page, in order: a line of a ```text block, with the indented
    lines that follow it (a long message wrapped) joined to it by one space."""
    found = []
    for block in _TEXT_BLOCK.findall(PAGE.read_text()):
        for line in block.splitlines():
            if line[:1].isspace() and found:
                found[-1] += ' ' + line.strip()
            elif line.strip():
                found.append(line)
    return found


def _pattern(line):
    parts = []
    for token in _TOKEN.split(line):
        if not token:
            continue
        if token.strip() == '...':
            parts.append('.*?')
        elif token in PLACEHOLDERS:
            parts.append('.+?')
        else:
            parts.append(re.escape(token))
    return re.compile(''.join(parts), re.S)


def _fixed(line):
    return ''.join(t for t in _TOKEN.split(line) if t.strip() != '...' and t not in PLACEHOLDERS)


TEMPLATES = [(line, _pattern(line)) for line in quoted_messages()]


def catalogued(message):
    """The page's lines that ``message`` (as printed) matches."""
    return [line for line, pattern in TEMPLATES if pattern.search(message)]


# -- how a message is printed --------------------------------------------------------------------

def raised(call, *args, **kwargs):
    """``TypeName: message`` of the exception ``call`` raises (a SystemExit: its message alone,
    as the interpreter prints it)."""
    try:
        call(*args, **kwargs)
    except SystemExit as e:
        return str(e.code)
    except Exception as e:      # noqa: BLE001 -- any exception is a message to look up
        return '%s: %s' % (type(e).__name__, e)
    raise AssertionError('%r raised nothing' % (call,))


def warned(category, call, *args, **kwargs):
    """``Category: message`` of the first ``category`` warning ``call`` gives."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        call(*args, **kwargs)
    found = [w for w in caught if issubclass(w.category, category)]
    assert found, '%r gave no %s' % (call, category.__name__)
    return '%s: %s' % (found[0].category.__name__, found[0].message)


@pytest.fixture(autouse=True)
def _own_kernel_cache(tmp_path, monkeypatch):
    # Nothing here builds the fused operator; should anything try, not into the user's cache.
    monkeypatch.setenv('NAMSG_KERNEL_CACHE', str(tmp_path / 'kernel-cache'))
    for name in ('NAMSG_FUSED', 'NAMSG_AGGREGATION_SIZE', 'NAMSG_DIST_SERVERS'):
        monkeypatch.delenv(name, raising=False)


def _dense(prefix, units, in_units):
    return gluon.nn.Dense(units, in_units=in_units, prefix=prefix)


def _integer_parameter():
    param = gluon.Parameter('counts', shape=(3,), dtype='int32', init=mx.init.Zero())
    param.initialize()
    return param


def _trained_states(path):
    """States of an 'arsg' Trainer of two layers, first_* and second_*, after one step."""
    net = gluon.nn.HybridSequential()
    net.add(_dense('first_', 3, 4), _dense('second_', 4, 3))
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), 'arsg', {'fused': False})
    with autograd.record():
        loss = net(mx.nd.ones((1, 4))).sum()
    loss.backward()
    trainer.step(1)
    trainer.save_states(str(path))
    return path


def _load_onto(path, first, second):
    """A Trainer for the layers ``first`` and ``second`` (prefix, units, in_units) loading
    ``path``."""
    net = gluon.nn.HybridSequential()
    net.add(_dense(*first), _dense(*second))
    net.initialize()
    gluon.Trainer(net.collect_params(), 'arsg', {'fused': False}).load_states(str(path))


def _step_with_nan_gradient():
    opt = mx.optimizer.create('arsg', skip_nonfinite_grad=True, fused=False)
    mx.optimizer.get_updater(opt)(0, mx.nd.array([1.0, float('nan')]), mx.nd.ones((2,)))


def _state_of_another_preconditioner():
    saved = mx.optimizer.get_updater(mx.optimizer.create('arsg', preconditioner='adam',
                                                         fused=False))
    saved(0, mx.nd.ones((2,)), mx.nd.ones((2,)))
    loaded = mx.optimizer.get_updater(mx.optimizer.create('arsg', fused=False))
    loaded.set_states(saved.get_states(dump_optimizer=False))
    loaded(0, mx.nd.ones((2,)), mx.nd.ones((2,)))


def _states_saved_with_multi_precision():
    saved = mx.optimizer.get_updater(mx.optimizer.create('arsg', multi_precision=True,
                                                         fused=False))
    weight = mx.nd.ones((2,), dtype='float16')
    saved(0, mx.nd.ones((2,), dtype='float16'), weight)
    loaded = mx.optimizer.get_updater(mx.optimizer.create('arsg', fused=False))
    loaded.set_states(saved.get_states(dump_optimizer=False))
    loaded(0, mx.nd.ones((2,), dtype='float16'), weight)


def _states_of_float32_weights_on_float64_ones():
    saved = mx.optimizer.get_updater(mx.optimizer.create('amsgrad'))
    saved(0, mx.nd.ones((2,)), mx.nd.ones((2,)))
    loaded = mx.optimizer.get_updater(mx.optimizer.create('amsgrad'))
    loaded.set_states(saved.get_states(dump_optimizer=False))
    loaded(0, mx.nd.ones((2,), dtype='float64'), mx.nd.ones((2,), dtype='float64'))


def _first_update(name, **kwargs):
    opt = mx.optimizer.create(name, **kwargs)
    mx.optimizer.get_updater(opt)(0, mx.nd.ones((2,)), mx.nd.ones((2,)))


def _boost_of(optimizer, params, **policy):
    net = _dense('boosted_', 2, 3)
    net.initialize()
    return ObservationBoost(gluon.Trainer(net.collect_params(), optimizer, params), **policy)


def _policy_state_of_another_point_of_the_run():
    opt = mx.optimizer.create('arsg', mu=0.05)
    before = ObservationBoost(opt, boost_epochs=[2]).state_dict()
    ObservationBoost(opt, boost_epochs=[2]).epoch_begin(2)
    ObservationBoost(opt, boost_epochs=[2]).load_state_dict(before)


def _search_on_too_few_batches():
    net = _dense('searched_', 2, 3)
    net.initialize()
    once = iter([(mx.nd.ones((4, 3)), mx.nd.zeros((4,)))])
    search_step_size(net, once, gluon.loss.SoftmaxCrossEntropyLoss(), iterations=2)


def _setting_changed_on_servers():
    class Servers:          # what pickling for KVStore.set_optimizer records (dist_sync)
        type = 'dist_sync'
    opt = mx.optimizer.create('arsg', mu=0.05)
    opt.__dict__['_servers'] = Servers()
    opt.mu = 0.1


def _kernel_state(monkeypatch, reason):
    """The fused operator as unavailable for ``reason`` in this process, for the test's time."""
    for key, value in (('loaded', False), ('error', reason), ('warned', False)):
        monkeypatch.setitem(kernels._state, key, value)


def _direct_call_failed_in_the_engine():
    """What the next update raises after a direct call that MXNet's engine could not run (its
    status as the library writes it; nothing is built)."""
    status = kernels.direct._CallStatus(ran=2, released=1, message=b'MXNDArrayGetData failed')
    pending = types.SimpleNamespace(pending=[(status, ())], pending_lock=threading.Lock())
    kernels.direct._DirectLibrary.raise_failures(pending)


def _direct_call_reason(monkeypatch, version, mkldnn):
    """Why the direct call cannot be had on MXNet ``version`` (with MKLDNN or not)."""
    with monkeypatch.context() as patch:
        patch.setattr(mx, '__version__', version)
        patch.setattr(kernels.library, 'MXNET_VERSION',
                      tuple(int(v) for v in version.split('.')[:2]))
        patch.setattr(kernels.library, '_mkldnn', lambda: mkldnn)
        return kernels.library.direct_unavailable_reason()


def _queued_at_exit_that_could_not_run():
    """What the horovod kvstore logs at exit when the operations still queued fail (another
    rank stopped first), as a program without logging set up prints it."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger('namsg.horovod_store')
    log.addHandler(handler)
    shut_down = mx.base.MXNetError('MXNetError: Horovod has been shut down. This was caused by '
                                   'an exception on one of the ranks')
    try:
        with mock.patch.object(mx.nd, 'waitall', side_effect=shut_down):
            horovod_store._finish_queued_operations()
    finally:
        log.removeHandler(handler)
    assert [r.levelname for r in records] == ['ERROR'], records
    return records[0].getMessage()


def _last_error_line(call, *args):
    """The last line ``call`` prints on stderr as it exits (an argument parser refusing its
    command line)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        call(*args)
    return err.getvalue().strip().splitlines()[-1]


def _parser_error(argv):
    """What ``python -m namsg_dist ARGV`` prints last on stderr for a refused command line."""
    return _last_error_line(namsg_dist.main, argv)


def _reference_with_unknown_preconditioner():
    x = reference.np.ones(2)
    reference.arsg_step(x, reference.arsg_init(x, 1e-8), x, 0.1, 0.9, 0.99, 0.1, 1e-8,
                        preconditioner='rmsprop')


# -- the optimizers, states, the fused operator, the boost, namsg_dist, Horovod -------------------

def messages(tmp_path, monkeypatch):
    """{what: message as printed}, one representative message per kind, triggered here."""
    found = {
        'a hyper-parameter out of range': raised(namsg.ARSG, beta1=1.0),
        'a hyper-parameter of the wrong type': raised(namsg.ARSG, learning_rate='0.01'),
        'a switch that is not a bool': raised(namsg.AMSGrad, lazy_update='no'),
        'fused=1': raised(namsg.ARSG, fused=1),
        "RSG given ARSG's arguments": raised(namsg.RSG, beta1=0.9),
        "Lookahead's inner optimizer": raised(namsg.Lookahead, optimizer=3),
        'learning_rate and lr_scheduler both given': warned(
            UserWarning, namsg.RAdam, learning_rate=0.05,
            lr_scheduler=mx.lr_scheduler.FactorScheduler(10, base_lr=0.1)),
        'an integer parameter': raised(gluon.Trainer, [_integer_parameter()], 'arsg'),
        'a state of another preconditioner': raised(_state_of_another_preconditioner),
        'states saved with the other multi_precision': raised(
            _states_saved_with_multi_precision),
        'states saved for weights of another dtype': raised(
            _states_of_float32_weights_on_float64_ones),
        'a skipped non-finite gradient': warned(RuntimeWarning, _step_with_nan_gradient),
        'a boost of an optimizer without mu': raised(_boost_of, 'adam', {}, boost_epochs=[6]),
        'a mu that two boosts would double past 1': raised(_boost_of, 'arsg', {'mu': 0.3},
                                                           boost_epochs=[6, 9], max_boosts=2),
        'a policy state of another point of the run': raised(
            _policy_state_of_another_point_of_the_run),
        'a search with too few minibatches': raised(_search_on_too_few_batches),
        'a setting the servers cannot take': raised(_setting_changed_on_servers),
        'a parameter-server job without workers': raised(namsg_dist.main,
                                                         ['launch', '-n', '0', '--', 'python']),
        'a bad --timeout': _parser_error(['launch', '-n', '1', '--timeout', '0', '--', 'true']),
        'gradient compression on the horovod kvstore': raised(
            Horovod.set_gradient_compression, None, {'type': '2bit'}),
        'an ssh job without hosts': raised(namsg_dist.launch_ssh, ['true'], [], 1),
        'the NumPy reference given an unknown preconditioner': raised(
            _reference_with_unknown_preconditioner),
        'operations of the horovod kvstore that could not run at exit':
            _queued_at_exit_that_could_not_run(),
    }
    states = _trained_states(tmp_path / 'first-second.states')
    found['states of another shape'] = raised(_load_onto, states, ('wider_', 5, 4),
                                              ('other_', 4, 5))
    found['states of other names'] = warned(namsg.StatesRenamedWarning, _load_onto, states,
                                            ('in_', 3, 4), ('out_', 4, 3))

    monkeypatch.setenv('NAMSG_AGGREGATION_SIZE', 'lots')
    found['a bad $NAMSG_AGGREGATION_SIZE'] = raised(mx.optimizer.create, 'radam')
    monkeypatch.delenv('NAMSG_AGGREGATION_SIZE')
    monkeypatch.setenv('NAMSG_FUSED', 'maybe')
    found['a bad $NAMSG_FUSED'] = raised(_first_update, 'rsg')
    monkeypatch.delenv('NAMSG_FUSED')

    _kernel_state(monkeypatch, 'the fused ARSG update needs a C++ compiler to build and g++ is '
                               'not on PATH (install g++ or set $CXX)')
    found['the fused operator required but unavailable'] = raised(_first_update, 'arsg', fused=True)
    found['the fused operator unavailable'] = warned(UserWarning, kernels.use_fused, None)
    found['the direct call on MXNet 1.5.0'] = _direct_call_reason(monkeypatch, '1.5.0', False)
    found['the direct call on mxnet-mkl 1.5'] = _direct_call_reason(monkeypatch, '1.5.1', True)
    found['a direct call that failed in the engine'] = raised(_direct_call_failed_in_the_engine)
    (tmp_path / 'a-file').write_text('')
    found['a kernel cache that cannot be written'] = raised(
        kernels.build, tmp_path / 'a-file' / 'cache' / 'libnamsg_arsg.so')
    if importlib.util.find_spec('horovod') is None:
        found['Horovod missing'] = raised(Horovod)
    return found


def test_the_package_s_messages_are_on_the_page(tmp_path, monkeypatch):
    missing = {what: message for what, message in messages(tmp_path, monkeypatch).items()
               if not catalogued(message)}
    assert not missing, 'not on %s:\n%s' % (PAGE.name, '\n'.join(
        '- %s: %s' % item for item in missing.items()))


# -- the experiment scripts ------------------------------------------------------------------------

def script_messages(tmp_path):
    """{what: message as the scripts print it}: their refusals print ``error: ...``."""
    experiments = pytest.importorskip('namsg.experiments', reason='needs namsg[experiments]')
    del experiments
    from namsg.experiments import cli, data as datasets
    from namsg.experiments.hparams import METHODS, PROTOCOLS
    from namsg.experiments.locks import RunBusy, WaitInterrupted
    from namsg.experiments.resume import run_state
    from namsg.experiments.runs import check_config
    from namsg.experiments.train import check_kvstore, train_all
    from namsg.experiments.threads import idle_cores_note
    from test_data import _flat_images, write_cifar_images, write_cifar_python
    from test_threads import _sysfs

    def _holding(root, release):
        """``root`` holding cifar-10-``release``.tar.gz, an archive of one text file."""
        import tarfile
        root.mkdir()
        (root / 'readme.txt').write_text('')
        with tarfile.open(root / ('cifar-10-%s.tar.gz' % release), 'w:gz') as tar:
            tar.add(root / 'readme.txt', arcname='readme.txt')
        (root / 'readme.txt').unlink()
        return root

    def _short_python_archive(root):
        import tarfile
        folder = write_cifar_python(root / 'short')
        (folder / 'test_batch').unlink()
        with tarfile.open(root / 'short.tar.gz', 'w:gz') as tar:
            tar.add(folder, arcname='cifar-10-batches-py')
        return root / 'short.tar.gz'

    def _with_a_readme(root):
        write_cifar_images(root)
        (root / 'train' / 'README.txt').write_text('')
        (root / 'train' / 'LICENSE.txt').write_text('')
        return root

    def as_script(call, *args):
        """As ``error: ...``, the form every script gives an exception it refuses with."""
        message = raised(call, *args)
        return message if message.startswith('error: ') else 'error: ' + message.split(': ', 1)[1]

    def logged(call, *args):
        """As ``warning: ...``, the first warning ``call`` logs on namsg.experiments, as the
        scripts print it (whatever ``call`` raises after it)."""
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        log = logging.getLogger('namsg.experiments')
        log.addHandler(handler)
        try:
            with contextlib.suppress(datasets.DataError):
                call(*args)
        finally:
            log.removeHandler(handler)
        assert records, '%r logged nothing' % (call,)
        return '%s: %s' % (records[0].levelname.lower(), records[0].getMessage())

    (tmp_path / 'a-file').write_text('')
    (tmp_path / 'mnist').mkdir()
    (tmp_path / 'not-idx').write_bytes(b'hello')
    damaged = tmp_path / 'damaged.jsonl'
    damaged.write_text('{"type": "header"}\n{"type": "epo')
    lines = []

    def busy(run, wait):
        raise RunBusy('mnist_logreg/ARSG/seed0', damaged, 'pid 12 on host')

    train_all([None], lambda run, wait: None if wait else busy(run, wait), echo=lines.append)
    from namsg.experiments import plots
    ours = dict(protocol=PROTOCOLS['cifar10_fine']._asdict())
    theirs = {'cifar10_fine': {'ARSG': [(dict(protocol=dict(ours['protocol'], model='resnet20')),
                                         [])]}}
    with mock.patch.object(cli, 'write_report', lambda *args, **kwargs: ''):
        on_the_sample = printed(cli._report, 'mnist', 'device', True, tmp_path / 'sample-runs')
    from namsg.experiments import grid, models
    from namsg.experiments.hparams import epsilon_for, to_mxnet
    data = dict(train=10, test=5, sha256='0' * 64)
    here = dict(ours, run='mnist_logreg/ARSG/seed0', method='ARSG', seed=0, data=data,
                data_source='a folder', train_size=10, test_size=5, contexts=['cpu(0)'],
                kvstore='device')
    not_compared = {
        'reference logs without a data fingerprint': dict(here, data='an older log'),
        'reference runs on other data': dict(here, data=dict(data, sha256='1' * 64)),
        'reference runs of another configuration': dict(here, kvstore='local'),
        'reference runs of other seeds': dict(here, seed=1),
    }
    with mock.patch.object(namsg._mxnet, 'has_kvstore_base', lambda: False):    # MXNet 1.5, 1.6
        horovod_on_mxnet_1_5 = (raised(cli.main, 'mnist', ['--kvstore', 'horovod']),
                                raised(check_kvstore, 'horovod'))
    return {
        'an unknown method': raised(cli._split, 'ARSG,FOO', METHODS, '--methods'),
        '--kvstore horovod on MXNet 1.5': horovod_on_mxnet_1_5[0],
        'the horovod kvstore of train_run on MXNet 1.5': horovod_on_mxnet_1_5[1],
        'an empty seed': raised(cli.parse_seeds, '0,,1'),
        'a scale that boosts ARSGB from epoch 1': raised(
            cli.check_boost, [PROTOCOLS['mnist_logreg'].scaled(0.05)], ['ARSGB']),
        'a log dir that is a file': raised(cli.check_writable, '--log-dir',
                                           str(tmp_path / 'a-file')),
        'a data folder that does not exist': raised(cli.check_data_dir, 'mnist',
                                                    str(tmp_path / 'nowhere')),
        'CIFAR-10 without data': as_script(cli.load_data, 'cifar10', None),
        'MNIST files missing': raised(datasets.load_mnist, tmp_path / 'mnist', False),
        'not an IDX file': raised(datasets.read_idx, tmp_path / 'not-idx'),
        'a flat image folder': raised(datasets.load_cifar10, _flat_images(tmp_path / 'flat')),
        'a folder holding another archive': raised(datasets.load_cifar10,
                                                   _holding(tmp_path / 'binary', 'binary')),
        'an empty cifar-10-python.tar.gz': raised(datasets.load_cifar10,
                                                  _holding(tmp_path / 'python', 'python')),
        'a cifar-10-python.tar.gz short of a batch': raised(datasets._python_tarball,
                                                            _short_python_archive(tmp_path)),
        'files an image folder does not read': logged(
            datasets._image_folder_split, _with_a_readme(tmp_path / 'images') / 'train', 'train'),
        'MNIST files swapped': raised(datasets._check_mnist_sizes, dict(train=10000, test=60000),
                                      {k: Path(k) for k in ('train_images', 'train_labels',
                                                            'test_images', 'test_labels')}),
        'a damaged log without checkpoint': as_script(
            run_state, {'protocol': {'epochs': 2}}, damaged, tmp_path / 'checkpoints'),
        'a log of another configuration': as_script(
            check_config, {'seed': 1}, {'seed': 0}, 'log %s was written' % damaged, damaged,
            tmp_path / 'checkpoints'),
        'a run locked by another process': lines[0],
        'waiting for it': lines[1],
        'stopped while waiting for it': cli.waiting_interrupted(WaitInterrupted(
            'mnist_logreg/ARSG/seed0', 'pid 12 on host', KeyboardInterrupt())),
        'cores MXNet leaves idle': idle_cores_note({}, [0, 1], 'x86_64', _sysfs(tmp_path, 2, 1)),
        'an older log\'s name for a model': _argparse_error(cli.build_parser('cifar10'),
                                                            ['--model', 'resnet20']),
        'no reference folder': cli.no_reference_note('cifar10', 'device'),
        'no reference run of the protocol': plots._no_reference(ours, 'cifar10_fine',
                                                                [('logs/x', theirs)])[0],
        'none in several folders': plots._no_reference(ours, 'cifar10_fine',
                                                       [('logs/x', theirs), ('logs/y', {})])[0],
        'runs on the sample, not compared': on_the_sample[0],
        **{'not compared run by run: ' + why: plots._not_compared(here, theirs)
           for why, theirs in not_compared.items()},
        'an unknown method from Python': raised(to_mxnet, 'arsg', (0.1, 0.9, 0.99, 0.1)),
        'an unknown setting from Python': raised(epsilon_for, 'ARSG', 'mnist'),
        'an unknown model from Python': raised(models.build, 'resnet18'),
        "a step-size search for SGD's grid": raised(grid.first_stage, PROTOCOLS['mnist_logreg'],
                                                    'SGD', None, 10),
    }


def _argparse_error(parser, argv):
    """The last line the argument parser prints refusing ``argv``."""
    return _last_error_line(parser.parse_args, argv)


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / (name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def printed(call, *args):
    """The lines ``call`` prints on stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        call(*args)
    return [line.strip() for line in out.getvalue().splitlines() if line.strip()]


def benchmark_messages(monkeypatch):
    """What scripts/benchmark_optimizers.py prints where the fused update cannot be had, and
    its refusals of a bad command line (as ``benchmark_optimizers.py: error: ...``)."""
    pytest.importorskip('namsg.experiments', reason='needs namsg[experiments]')   # ResNet-20
    bench = _load_script('benchmark_optimizers')
    # A reason that no quote matches by itself, so that the lines around it are what is found.
    _kernel_state(monkeypatch, 'no fused update in this test')
    assert not catalogued('no fused update in this test')
    rows, missing = bench.available_optimizers()
    assert 'arsg fused' not in rows and missing
    dispatch = printed(bench.main, ['--only', 'dispatch'])
    table = printed(bench.report, 'a table', {'adam': [1.0], 'sgd': [1.0]}, missing)
    monkeypatch.setattr(sys, 'argv', [str(ROOT / 'scripts' / 'benchmark_optimizers.py')])
    return {
        'the benchmark without the fused update': dispatch[0],
        'its timing tables without it': table[-1],
        'its dispatch measurement without it': dispatch[-1],
        'an unknown benchmark measurement': _last_error_line(bench.parse_args,
                                                             ['--only', 'calls,speed']),
        'no benchmark rounds': _last_error_line(bench.parse_args, ['--rounds', '0']),
        'a negative benchmark warm-up': _last_error_line(bench.parse_args, ['--warmup', '-1']),
    }


def test_the_benchmarks_messages_are_on_the_page(monkeypatch):
    missing = {what: message for what, message in benchmark_messages(monkeypatch).items()
               if not catalogued(message)}
    assert not missing, 'not on %s:\n%s' % (PAGE.name, '\n'.join(
        '- %s: %s' % item for item in missing.items()))


def test_the_scripts_messages_are_on_the_page(tmp_path):
    missing = {what: message for what, message in script_messages(tmp_path).items()
               if not catalogued(message)}
    assert not missing, 'not on %s:\n%s' % (PAGE.name, '\n'.join(
        '- %s: %s' % item for item in missing.items()))


# -- the catalogue itself ----------------------------------------------------------------------

def test_every_quoted_message_keeps_enough_fixed_words():
    assert len(TEMPLATES) > 100
    loose = [line for line, _ in TEMPLATES if len(_fixed(line).strip()) < LEAST_FIXED]
    assert not loose, loose


def test_a_message_the_package_never_prints_is_not_found():
    for message in ('ValueError: something namsg never prints about a hyper-parameter',
                    'error: the weather is not right for training today'):
        assert not catalogued(message), catalogued(message)


def test_the_page_keeps_its_section_on_mxnet_s_behaviours():
    text = PAGE.read_text()
    assert '(mxnet-behaviours-namsg-inherits)=\n## MXNet behaviours namsg inherits' in text
