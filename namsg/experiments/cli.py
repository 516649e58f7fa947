"""The command line shared by scripts/reproduce_mnist.py and scripts/reproduce_cifar10.py.

Every input is checked before any work starts, and a rejected command creates and writes
nothing: flags, the data directory (never created), the output directories (writable), then,
with the data loaded, every run's existing log and checkpoint. Only then does training begin.
"""

import argparse
import contextlib
import errno
import importlib.util
import logging
import os
import shlex
import signal
import sys
import tempfile
import textwrap
import threading
import warnings
from pathlib import Path

import mxnet as mx

from .._checks import check_environment
from . import data as datasets
from .hparams import METHODS, PROTOCOLS
from .checkpoints import Checkpoints
from .locks import WaitInterrupted
from .logs import LogError
from .models import CIFAR10_MODELS, LOGGED_NAMES
from .plots import write_report
from .prepare import PREPARE
from .resume import check_run
from .runs import CheckpointError, run_header, run_name
from .threads import idle_cores_note
from .train import check_kvstore, train_all, train_run

EXPERIMENTS = {
    'mnist': dict(settings=('mnist_logreg', 'mnist_cnn'), seeds='0,1,2,3,4', section='B.1'),
    'cifar10': dict(settings=('cifar10_fine', 'cifar10_fast'), seeds='0', section='B.3'),
}
#: kvstore types the training loop accepts ('horovod': Horovod's allreduce, see its section).
KVSTORES = ('device', 'local', 'dist_sync', 'dist_device_sync', 'dist_async', 'horovod')
#: Where a user's runs go by default. logs/ holds the committed reference runs: a rerun is
#: written beside them only when --log-dir asks for it, and is compared with them in the report
#: (those of its experiment and kind: see reference_dirs).
RUNS_DIR = 'runs'
REFERENCE_DIR = 'logs'
#: The checkout's reference runs, found from any working directory (scripts run from a clone).
_CHECKOUT_REFERENCE = Path(__file__).resolve().parents[2] / REFERENCE_DIR
#: Seconds between progress lines when the output is not a terminal.
PROGRESS_EVERY = 30.0
#: What gives a process its rank in a job before any kvstore exists, by launcher: namsg_dist
#: launch and dmlc_tracker's local and SGE back ends (DMLC_TASK_ID), horovodrun, MPI.
RANK_VARIABLES = {'dist': ('DMLC_TASK_ID', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK'),
                  'horovod': ('HOROVOD_RANK', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK')}
#: Kernel file systems, which hold no ordinary files: an output directory cannot be made there.
KERNEL_FILE_SYSTEMS = {'proc': 'the kernel\'s process information',
                       'sysfs': 'the kernel\'s device information',
                       'cgroup': 'control groups', 'cgroup2': 'control groups',
                       'debugfs': 'kernel debugging', 'securityfs': 'kernel security',
                       'tracefs': 'kernel tracing', 'configfs': 'kernel configuration'}

logger = logging.getLogger(__name__)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults appended to each flag's help unless the help states its own (a switch's as
    "off"); the description kept as written."""

    def _get_help_string(self, action):
        if '(default' in (action.help or ''):
            return action.help
        if action.nargs == 0 and action.default is False:      # a switch
            return '%s (default: off)' % action.help
        return super()._get_help_string(action)


def output_name(experiment, sample=False, kvstore='device'):
    """<experiment>[-sample][-dist|-horovod]: the folder of a user's runs under runs/, and of
    the reference runs of the same kind under logs/ (a job's runs differ from a single
    process's in their configuration, so they are kept apart; see reference_dirs)."""
    return experiment + ('-sample' if sample else '') + (
        '-dist' if kvstore.startswith('dist') else '-horovod' if kvstore == 'horovod' else '')


#: The words of output_name that name a kind of runs.
KIND_TAGS = frozenset(('sample', 'dist', 'horovod'))


def folder_kind(name, experiment):
    """The kind of runs that a folder named ``name`` holds by output_name's naming, as the set
    of its ``-``-separated words among KIND_TAGS (empty: a single process's runs on the full
    data); None when the folder is not ``experiment``'s (``<experiment>`` or
    ``<experiment>-<words>``). 'cifar10-b3-scale0.125' -> frozenset(), 'mnist-dist' ->
    frozenset({'dist'}), 'cifar100' -> None."""
    words = name.split('-')
    if words[0] != experiment:
        return None
    return KIND_TAGS.intersection(words[1:])


def output_dirs(experiment, sample=False, kvstore='device'):
    """(log dir, checkpoint dir) of a user's runs: runs/<output_name>/ and its checkpoints/
    sub-folder."""
    root = '%s/%s' % (RUNS_DIR, output_name(experiment, sample, kvstore))
    return root, root + '/checkpoints'


def build_parser(experiment):
    spec = EXPERIMENTS[experiment]
    mnist = experiment == 'mnist'
    logs, checkpoints = output_dirs(experiment, False)
    sample_logs, _ = output_dirs(experiment, True)
    parser = argparse.ArgumentParser(
        description=textwrap.fill('Rerun the paper\'s %s experiments (supplementary %s) with Table A1\'s '
                    'hyper-parameters. Each run is checked before any is trained; finished runs '
                    'are skipped and interrupted ones resumed. The plots and summary.md are '
                    'drawn at the end, beside the committed reference runs of the same protocol '
                    '(network and budget) found in %s/%s or %s/%s-*.'
                    % ('MNIST' if mnist else 'CIFAR-10', spec['section'], REFERENCE_DIR,
                       experiment, REFERENCE_DIR, experiment), 90),
        formatter_class=HelpFormatter)
    parser.add_argument('--settings', default=','.join(spec['settings']),
                        help='comma-separated experiment settings, from %s'
                        % ', '.join(spec['settings']))
    parser.add_argument('--methods', default=','.join(METHODS),
                        help='comma-separated methods, from %s (any case)' % ', '.join(METHODS))
    if not mnist:
        # MNIST's settings have a network each; CIFAR-10's two share one, of a choice.
        parser.add_argument('--model', default=CIFAR10_MODELS[0], type=_model_name,
                            choices=CIFAR10_MODELS,
                            help='the network: resnet20_b3 (B.3\'s ResNet-20 as written) or '
                                 'cifar_resnet20_v1 (GluonCV\'s, without the ReLU after the '
                                 'first conv+BN; it made the runs in logs/cifar10 and '
                                 'logs/cifar10-scale0.125, whose logs name it resnet20)')
    parser.add_argument('--seeds', default=None,
                        help='comma-separated random seeds, integers >= 0 (default: %s%s)'
                        % (spec['seeds'], '; 0 on the embedded sample' if mnist else ''))
    if mnist:
        data_help = ('directory with the four MNIST files, gzip\'d or not; missing ones are '
                     'downloaded into it if it exists (default: $%s; without either, the '
                     'embedded 5,000-image sample)' % datasets.DATA_DIR_ENV)
    else:
        data_help = ('CIFAR-10 in any of its layouts: %s (default: $%s)'
                     % (datasets.CIFAR_LAYOUTS, datasets.DATA_DIR_ENV))
    parser.add_argument('--data-dir', default=None, help=data_help)
    parser.add_argument('--log-dir', default=None,
                        help='where the JSON-lines logs go, one file per run, with the plots and '
                             'summary.md (default: %s%s; in a job, -dist appended for a dist_* '
                             'kvstore and -horovod for horovod, e.g. %s and %s)'
                        % (logs, '; %s on the embedded sample' % sample_logs if mnist else '',
                           output_dirs(experiment, False, 'dist_sync')[0],
                           output_dirs(experiment, False, 'horovod')[0]))
    parser.add_argument('--checkpoint-dir', default=None,
                        help='where checkpoints go, read on resume (default: the log dir\'s '
                             'checkpoints/ sub-folder, e.g. %s)' % checkpoints)
    parser.add_argument('--scale', type=float, default=1.0,
                        help='budget: fraction of the protocol\'s epochs; the boost epoch and '
                             'the step-size drop move in proportion (1.0 is the paper\'s)')
    parser.add_argument('--gpus', default='',
                        help='comma-separated GPU ids, e.g. 0,1 (default: empty, the CPU)')
    parser.add_argument('--kvstore', default='device', choices=KVSTORES,
                        help='MXNet kvstore type')
    parser.add_argument('--no-progress', action='store_true',
                        help='no progress bar or progress lines (one line per epoch is printed '
                             'all the same)')
    parser.add_argument('--progress-every', type=float, default=PROGRESS_EVERY,
                        help='seconds between progress lines (batch, running loss, images/s) '
                             'when the output is not a terminal')
    return parser


def parse_args(experiment, argv=None):
    return build_parser(experiment).parse_args(argv)


def _model_name(name):
    """--model's value; an older log's name for a model (e.g. 'resnet20') is refused, naming
    the model's name now (argparse then checks the choices)."""
    if name in LOGGED_NAMES:
        raise argparse.ArgumentTypeError(
            '%r is what logs of earlier versions call %s: give --model %s'
            % (name, LOGGED_NAMES[name], LOGGED_NAMES[name]))
    return name


def _split(text, allowed, flag):
    """The comma-separated names of ``text``, matched to ``allowed`` in any case; an empty item
    (``ARSG,,SGD``, ``ARSG,``) is refused as a typo, as in :func:`parse_seeds`."""
    by_key = {a.lower(): a for a in allowed}
    items = [t.strip() for t in text.split(',')]
    unknown = [t for t in items if t and t.lower() not in by_key]
    if unknown or not all(items):
        problem = ('unknown %s' % ', '.join(unknown) if unknown
                   else 'none given' if not any(items) else 'an empty item in %r' % text)
        raise SystemExit('error: %s: %s; choose from %s'
                         % (flag, problem, ', '.join(allowed)))
    return list(dict.fromkeys(by_key[t.lower()] for t in items))


def parse_seeds(text):
    """Comma-separated integers >= 0 (NumPy's generators take no negative seed); an empty item
    (``0,,1``, ``0,``) is refused as a typo, not skipped."""
    try:
        seeds = [int(t) for t in text.split(',')]
    except ValueError:
        seeds = None
    if not seeds or any(s < 0 or s >= 2 ** 31 for s in seeds):
        raise SystemExit('error: --seeds takes comma-separated integers from 0 to 2**31 - 1, '
                         'e.g. 0,1,2; got %r' % text)
    return list(dict.fromkeys(seeds))


def contexts_from(gpus):
    try:
        ids = [int(i) for i in gpus.split(',') if i.strip()]
    except ValueError:
        raise SystemExit('error: --gpus takes comma-separated GPU ids, e.g. 0,1; got %r' % gpus)
    if ids:
        # An absent GPU would fail only in the first run, with MXNet's message.
        try:
            available = mx.context.num_gpus()
        except mx.base.MXNetError:        # a CUDA build on a machine without a driver
            available = 0
        absent = [i for i in ids if not 0 <= i < available]
        if absent:
            raise SystemExit('error: --gpus %s: no GPU %s; MXNet sees %d GPU%s here%s; leave '
                             '--gpus empty to train on the CPU'
                             % (gpus, ', '.join(map(str, absent)), available,
                                '' if available == 1 else 's',
                                ' (ids 0 to %d)' % (available - 1) if available else ''))
    return [mx.gpu(i) for i in ids] if ids else [mx.cpu()]


def check_boost(protocols, methods):
    """ARSGB boosted from epoch 1 is not ARSGB: refuse a --scale that moves the boost there."""
    if 'ARSGB' not in methods:
        return
    moved = [p for p in protocols if p.boost_epoch <= 1]
    if moved:
        # The scaled boost epoch is round((epoch - 1) * scale) + 1: epoch 1 up to 0.5 / (epoch - 1).
        # The bound that every setting of the command needs, not only the first one refused.
        lowest = max(0.5 / (PROTOCOLS[p.setting].boost_epoch - 1) for p in protocols)
        raise SystemExit(
            'error: --scale %g moves ARSGB\'s boost to epoch 1 (boosted from the start, so it '
            'would not be ARSGB) in %s; use --scale above %g, or leave ARSGB out of --methods'
            % (moved[0].scale, ' and '.join('%s (of %d epoch%s)' % (
                p.setting, p.epochs, '' if p.epochs == 1 else 's') for p in moved), lowest))


def _file_system(path):
    """The type of the file system that holds ``path`` (from /proc/self/mounts), else None."""
    try:
        table = Path('/proc/self/mounts').read_text()
    except OSError:
        return None
    mounts = [line.split()[1:3] for line in table.splitlines()]
    resolved = str(Path(path).resolve())
    best = max((point for point, _ in mounts
                if resolved == point or resolved.startswith(point.rstrip('/') + '/')),
               key=len, default=None)
    return dict(mounts).get(best) if best else None


def _unwritable(folder, error):
    """Why nothing can be written in the existing ``folder``, in plain words."""
    kind = _file_system(folder)
    if kind in KERNEL_FILE_SYSTEMS:
        return ('%s is part of a %s file system (%s), which holds no ordinary files'
                % (folder, kind, KERNEL_FILE_SYSTEMS[kind]))
    reasons = {errno.EACCES: 'you have no permission to write in %s',
               errno.EPERM: 'you have no permission to write in %s',
               errno.EROFS: '%s is on a read-only file system',
               errno.ENOSPC: 'the disk that holds %s is full',
               errno.EDQUOT: 'your disk quota on the disk that holds %s is used up'}
    if error.errno in reasons:
        return reasons[error.errno] % folder
    return 'writing in %s fails (%s)' % (folder, error.strerror or error)


def check_writable(flag, path):
    """Refuse an output directory that cannot be created or written, before any work, saying
    why in plain words; creates nothing (the probe is an unnamed temporary file where the system
    has those)."""
    path = Path(path)
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        kind = ('a broken symbolic link' if existing.is_symlink() and not existing.exists()
                else 'a file')
        problem = ('it is %s, not a directory' % kind if existing == path else
                   'the directory cannot be created there: %s is %s, not a directory'
                   % (existing, kind))
    else:
        try:
            tempfile.TemporaryFile(dir=existing).close()
            return
        except OSError as e:
            problem = '%s: %s' % ('cannot write in it' if existing == path else
                                  'the directory cannot be created there',
                                  _unwritable(existing, e))
    raise SystemExit('error: %s %s: %s; choose a writable directory with %s'
                     % (flag, path, problem, flag))


def launcher_rank(kvstore):
    """This process's rank in its job as the launcher set it before any kvstore exists (see
    RANK_VARIABLES); 0 outside a job, and where the launcher sets none (dmlc_tracker's ssh)."""
    if not (kvstore.startswith('dist') or kvstore == 'horovod'):
        return 0
    for name in RANK_VARIABLES['horovod' if kvstore == 'horovod' else 'dist']:
        if os.environ.get(name, '').strip().isdigit():
            return int(os.environ[name])
    return 0


def job_workers(kvstore):
    """The job's number of processes for ``kvstore`` (``--kvstore``), from what its launcher set
    before any kvstore exists: horovodrun's HOROVOD_SIZE, dmlc_tracker's DMLC_NUM_WORKER, else
    1."""
    if kvstore == 'horovod':
        return int(os.environ.get('HOROVOD_SIZE', 1))
    return int(os.environ.get('DMLC_NUM_WORKER', 1))


@contextlib.contextmanager
def _quiet(quiet):
    """Warnings and notes of namsg.experiments held back inside the block when ``quiet`` (on the
    workers of a job other than rank 0: said once a job); errors still pass."""
    log = logging.getLogger(__package__)
    level = log.level
    if quiet:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class _LevelFormatter(logging.Formatter):
    """``warning: message``, as the scripts' ``error: ...`` lines."""

    def format(self, record):
        return '%s: %s' % (record.levelname.lower(), super().format(record))


def setup_logging():
    """Log lines on stderr as ``warning: ...`` (namsg.experiments' from INFO on, the data
    download's progress; others' from WARNING), unless the program has configured logging."""
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_LevelFormatter('%(message)s'))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger(__package__).setLevel(logging.INFO)


def _data_folder(data_dir_flag):
    """'data folder <path> (from --data-dir)' or '... (from $NAMSG_DATA_DIR)': how every data
    error names the folder and where its path came from."""
    return 'data folder %s (from %s)' % (datasets.data_dir_from(data_dir_flag),
                                         '--data-dir' if data_dir_flag
                                         else '$' + datasets.DATA_DIR_ENV)


def check_data_dir(experiment, data_dir_flag):
    """Refuse a data folder (flag or $NAMSG_DATA_DIR) that does not exist: it is never created."""
    data_dir = datasets.data_dir_from(data_dir_flag)
    if data_dir is not None and not data_dir.exists():
        raise SystemExit('error: %s does not exist; give the folder that holds the data%s'
                         % (_data_folder(data_dir_flag), '; to have MNIST downloaded, create '
                            'the folder first' if experiment == 'mnist' else ''))


def load_data(experiment, data_dir_flag):
    """The data set from the flag's folder, else $NAMSG_DATA_DIR's, else (MNIST only) the
    embedded sample. A DataError names the folder and where its path came from."""
    data_dir = datasets.data_dir_from(data_dir_flag)
    if data_dir is None:
        if experiment == 'mnist':
            logger.warning('no --data-dir and no $%s: using the embedded 5,000-image MNIST '
                           'sample. It is not the full set; the results are not comparable '
                           'with the paper\'s.', datasets.DATA_DIR_ENV)
            return datasets.load_mnist_sample()
        raise datasets.DataError('CIFAR-10 needs --data-dir (or $%s): %s'
                                 % (datasets.DATA_DIR_ENV, datasets.CIFAR_LAYOUTS))
    try:
        return (datasets.load_mnist if experiment == 'mnist' else datasets.load_cifar10)(data_dir)
    except datasets.DataError as e:
        raise datasets.DataError('%s: %s' % (_data_folder(data_dir_flag), e)) from e


def load_data_or_exit(experiment, data_dir_flag, kvstore='device'):
    """load_data for a script, and the data prepared for training: (dataset, prepared). Its
    log lines set up (said on rank 0 alone in a job), a data error turned into ``error: ...``
    and exit status 1, Ctrl-C or SIGTERM into one line and 130 or 143."""
    setup_logging()
    # A download is renamed into place only whole: nothing is half-written.
    with interrupt_says('interrupted while loading the data; nothing was written (files '
                        'already downloaded are kept); the same command starts again'):
        try:
            with _quiet(launcher_rank(kvstore) != 0):
                dataset = load_data(experiment, data_dir_flag)
            return dataset, PREPARE[experiment](dataset)
        except datasets.DataError as e:
            raise SystemExit('error: %s' % e)


@contextlib.contextmanager
def interrupt_says(line):
    """Ctrl-C or SIGTERM within the block ends the command with ``line`` (what was written and
    what the same command will do) and exit status 130 or 143 (:func:`interrupted_status`),
    not a KeyboardInterrupt traceback. Blocks that wait for another process's run handle
    WaitInterrupted themselves, inside."""
    try:
        yield
    except KeyboardInterrupt as e:
        _echo(line)
        raise SystemExit(interrupted_status(e))


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a batch scheduler's time limit), taken as Ctrl-C is."""


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """Within the block, SIGTERM stops the command as Ctrl-C does (raising Terminated): the
    same "interrupted: ..." line saying what the same command will do, the runs' locks let go,
    and exit status 143 (see :func:`interrupted_status`) instead of a silent death. A handler
    set already (a launcher's) is left alone, as is SIGTERM outside the main thread."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_status(error):
    """The exit status after ``error`` (a KeyboardInterrupt): 128 + the signal, as a shell
    reports a process the signal ended (130 for Ctrl-C, 143 for SIGTERM)."""
    if isinstance(error, WaitInterrupted):
        error = error.interrupt
    return 128 + (signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT)


def waiting_interrupted(error):
    """The line said for ``error``, a WaitInterrupted: the process that waited trained nothing
    of the run, and the process it waited for (named where it wrote its name) goes on with it."""
    return ('interrupted: %s stopped while waiting for %s, which holds the run: this process '
            'trained nothing of it, and that process goes on with it'
            % (error.run, error.holder or 'the other process'))


def check_one_run_per_job(kvstore, settings, methods, seeds):
    """Exit with ``error: ...`` where a ``dist_*`` job is given more than one run: each run
    creates its own store, and a second parameter-server store in one process waits for ever
    (MXNet's servers and scheduler serve one per job), so such a job trained its first run and
    then hung until the launcher's timeout."""
    runs = len(settings) * len(methods) * len(seeds)
    if kvstore.startswith('dist') and runs > 1:
        raise SystemExit(
            'error: --kvstore %s: a parameter-server job trains one run (a second store in '
            'the same processes waits for ever), and this command has %d (%d of --settings, '
            '%d of --methods, %d of --seeds): give one of each, e.g. --settings %s --methods '
            '%s --seeds %d, and launch a job for each run' % (
                kvstore, runs, len(settings), len(methods), len(seeds), settings[0],
                methods[0], seeds[0]))


def check_namsg_environment():
    """The environment variables namsg's optimizers read (:func:`namsg.check_environment`),
    checked before any run: a bad value would otherwise stop the first run of a namsg
    optimizer, after the runs before it, with a traceback. Exits with ``error: ...``."""
    try:
        check_environment()
    except ValueError as e:
        raise SystemExit('error: %s' % e)


def main(experiment, argv=None):
    """The reproduction command of ``experiment`` ('mnist' or 'cifar10') on ``argv``."""
    with sigterm_as_ctrl_c():
        _main(experiment, argv)


def _main(experiment, argv):
    args = parse_args(experiment, argv)
    check_namsg_environment()
    settings = _split(args.settings, EXPERIMENTS[experiment]['settings'], '--settings')
    methods = _split(args.methods, METHODS, '--methods')
    model = getattr(args, 'model', None)     # CIFAR-10's: else the settings' own networks
    try:
        protocols = [PROTOCOLS[s].scaled(args.scale)._replace(
            model=model or PROTOCOLS[s].model) for s in settings]
    except ValueError as e:
        raise SystemExit('error: --scale: %s' % e)
    check_boost(protocols, methods)
    if not args.progress_every >= 0:      # NaN too
        raise SystemExit('error: --progress-every takes seconds >= 0, got %g'
                         % args.progress_every)
    contexts = contexts_from(args.gpus)
    try:
        check_kvstore(args.kvstore)
    except ValueError as e:
        raise SystemExit('error: --kvstore %s: %s' % (args.kvstore, e))
    if args.kvstore == 'horovod' and importlib.util.find_spec('horovod') is None:
        # Else the first run's store would fail, after the data and every run were checked.
        raise SystemExit('error: --kvstore horovod: Horovod is not installed here; install it '
                         'built for MXNet (docs/scaling/horovod.md) and start the '
                         'job with horovodrun, or choose another --kvstore')
    for flag, value in (('--data-dir', args.data_dir), ('--log-dir', args.log_dir),
                        ('--checkpoint-dir', args.checkpoint_dir)):
        if value is not None and not value.strip():
            # Else '' is no --data-dir at all, and the current directory for the others.
            raise SystemExit('error: %s is empty; give a folder, or leave the flag out for its '
                             'default' % flag)
    check_data_dir(experiment, args.data_dir)
    data_dir = datasets.data_dir_from(args.data_dir)
    sample = data_dir is None and experiment == 'mnist'
    log_dir, checkpoint_dir = output_dirs(experiment, sample, args.kvstore)
    if args.log_dir is not None:
        log_dir = args.log_dir
        checkpoint_dir = str(Path(log_dir) / 'checkpoints')
    if args.checkpoint_dir is not None:
        checkpoint_dir = args.checkpoint_dir
    seeds = parse_seeds(args.seeds if args.seeds is not None
                        else '0' if sample else EXPERIMENTS[experiment]['seeds'])
    check_one_run_per_job(args.kvstore, settings, methods, seeds)
    check_writable('--log-dir', log_dir)
    check_writable('--checkpoint-dir', checkpoint_dir)

    dataset, prepared = load_data_or_exit(experiment, args.data_dir, args.kvstore)
    fingerprint = dataset.fingerprint()
    command = ' '.join(shlex.quote(a) for a in [sys.argv[0]] + list(
        sys.argv[1:] if argv is None else argv))
    distributed = args.kvstore.startswith('dist')
    with interrupt_says('interrupted before the first run: nothing was written; the same '
                        'command starts again'):
        runs = _checked_runs(protocols, methods, seeds, prepared, contexts, args.kvstore,
                             command, dataset.source, fingerprint, log_dir, checkpoint_dir)
        _echo('data: %s (%d training, %d validation images); logs in %s'
              % (dataset.source, len(prepared.train_y), len(prepared.test_y), log_dir))
        note = idle_cores_note()
        if note:
            _echo(note)
    bar = not args.no_progress and sys.stderr.isatty()
    every = None if args.no_progress or bar else args.progress_every

    def train(run, wait):
        protocol, method, seed, paths = run
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', DeprecationWarning)
                return train_run(protocol, method, seed, prepared, contexts=contexts,
                                 kvstore=args.kvstore, progress=bar, progress_every=every,
                                 command=command, data_source=dataset.source,
                                 data_fingerprint=fingerprint, echo=_echo, wait=wait, **paths)
        except CheckpointError as e:
            raise SystemExit('error: %s' % e)
        except WaitInterrupted as e:
            _echo(waiting_interrupted(e))
            raise SystemExit(interrupted_status(e))
        except KeyboardInterrupt as e:
            # Checkpoints are whole epochs, renamed into place: nothing is half-written.
            _echo('interrupted: %s stopped in an epoch; %s'
                  % (run_name(protocol, method, seed), _after_interrupt(distributed, **paths)))
            raise SystemExit(interrupted_status(e))

    train_all(runs, train, echo=_echo)
    _report(experiment, args.kvstore, sample, log_dir)


def _checked_runs(protocols, methods, seeds, prepared, contexts, kvstore, command, data_source,
                  data_fingerprint, log_dir, checkpoint_dir):
    """Every run of the command as (protocol, method, seed, paths), each checked against its
    log and checkpoints (:func:`~namsg.experiments.resume.check_run`) before any trains: a
    refusal is ``error: ...``, exit 1."""
    runs = []
    for protocol in protocols:
        for method in methods:
            for seed in seeds:
                name = run_name(protocol, method, seed)
                paths = dict(log_path=Path(log_dir) / (name + '.jsonl'),
                             checkpoint_dir=Path(checkpoint_dir) / name)
                # Every worker of a job checks with the job's size, as train_run will.
                header = run_header(protocol, method, seed, prepared, contexts, kvstore,
                                    command=command, data_source=data_source,
                                    data_fingerprint=data_fingerprint,
                                    workers=job_workers(kvstore))
                try:
                    check_run(header, **paths)
                except CheckpointError as e:
                    raise SystemExit('error: %s' % e)
                runs.append((protocol, method, seed, paths))
    return runs


def _report(experiment, kvstore, sample, log_dir):
    """After the runs: the report of ``log_dir`` beside the committed reference runs, drawn
    and printed (or, in a distributed job, the command that draws it)."""
    # Runs on the sample are not compared with reference runs on the full set.
    references = [] if sample else reference_dirs(experiment, kvstore)
    if sample:
        _echo('reference: runs on the embedded sample are not compared with the committed '
              'runs on the full set')
    elif not references:
        _echo(no_reference_note(experiment, kvstore))
    # Runs written into a reference folder are not their own reference.
    references = [r for r in references if r.resolve() != Path(log_dir).resolve()]
    # Quoted: a path with a space is common (a clone in "My Projects").
    draw = ' '.join(['python', 'scripts/plot_results.py', '--log-dir', shlex.quote(str(log_dir))]
                    + ['--reference %s' % shlex.quote(str(r)) for r in references])
    if kvstore.startswith('dist') or kvstore == 'horovod':
        # Every worker of the job runs this; drawing is left to plot_results.py afterwards,
        # and rank 0 alone says how (it wrote the logs).
        if launcher_rank(kvstore) == 0:
            _echo('plots: ' + draw)
        return
    # The plots and summary.md are each replaced whole (namsg.experiments.files).
    with interrupt_says('interrupted while drawing the report: the runs are done and logged, '
                        'the plots and summary.md are as they were or redrawn, each whole; '
                        'draw them with %s' % draw):
        try:
            summary = write_report(log_dir, reference_dir=references)
        except LogError as e:
            # The runs are trained and logged; a damaged log of another run in the folder
            # stops only the report, which plot_results.py draws once it is moved away.
            raise SystemExit('error: the runs are done, but the report cannot be drawn: %s; '
                             'move that log away and draw it with %s' % (e, draw))
    if summary:
        print('\nplots and summary.md written to %s\n\n%s' % (log_dir, summary))


def reference_dirs(experiment, kvstore):
    """The folders of committed reference runs for ``experiment`` run on ``kvstore``:
    ``logs/<name>`` (``<name>`` is :func:`output_name`'s) and every ``logs/<experiment>-<words>``
    of the same kind (:func:`folder_kind`; e.g. logs/cifar10-full and
    logs/cifar10-b3-scale0.125 beside logs/cifar10, never logs/mnist-dist for a single process's
    runs), ``logs/<name>`` first, then by name. From the working directory's logs/ where it holds
    any, else from the checkout these scripts belong to; [] where neither does. The report
    compares each setting with the one holding runs of its protocol
    (:func:`~namsg.experiments.plots.write_report`)."""
    name = output_name(experiment, kvstore=kvstore)
    kind = folder_kind(name, experiment)
    for root in (Path(REFERENCE_DIR), _CHECKOUT_REFERENCE):
        found = [folder for folder in root.glob(experiment + '*')
                 if folder.is_dir() and folder_kind(folder.name, experiment) == kind]
        if found:
            return sorted(found, key=lambda folder: (folder.name != name, folder.name))
    return []


def no_reference_note(experiment, kvstore):
    """The line said after the runs where :func:`reference_dirs` finds no folder."""
    name = output_name(experiment, kvstore=kvstore)
    return ('reference: no committed reference runs found (%s/%s or %s/%s-* in the working '
            'directory or the checkout); the report shows these runs alone'
            % (REFERENCE_DIR, name, REFERENCE_DIR, name))


def _after_interrupt(distributed, log_path, checkpoint_dir):
    """What the same command does with a run interrupted in an epoch, from what is on disk."""
    if distributed and log_path.is_file():
        return ('a dist_* job keeps no checkpoint, so it cannot resume: move its log %s away and '
                'the same command starts it again from the beginning' % log_path)
    latest = None if distributed else Checkpoints(checkpoint_dir).latest()
    if latest is None:
        return 'no epoch was complete: the same command starts it again from the beginning'
    return ('the same command resumes it from its last complete epoch (checkpoint %s)'
            % latest)


def _echo(line):
    print(line, flush=True)
