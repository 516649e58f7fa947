"""The command line shared by scripts/reproduce_mnist.py and scripts/reproduce_cifar10.py."""

import argparse
import shlex
import sys
import warnings
from pathlib import Path

import mxnet as mx

from . import data as datasets
from .hparams import METHODS, PROTOCOLS
from .plots import write_report
from .train import PREPARE, CheckpointError, run_name, train_run

EXPERIMENTS = {
    'mnist': dict(settings=('mnist_logreg', 'mnist_cnn'), seeds='0,1,2,3,4'),
    'cifar10': dict(settings=('cifar10_fine', 'cifar10_fast'), seeds='0'),
}
# The quick form on the embedded MNIST sample: one seed, and its own output directories so that
# logs/ keeps only runs on real data.
SAMPLE_DEFAULTS = dict(seeds='0', log_dir='runs/mnist-sample/logs',
                       checkpoint_dir='runs/mnist-sample/checkpoints')


def build_parser(experiment):
    spec = EXPERIMENTS[experiment]
    parser = argparse.ArgumentParser(
        description='Rerun the paper\'s %s experiments (supplementary B.%s) with Table A1\'s '
                    'hyper-parameters.' % (experiment.upper(), '1' if experiment == 'mnist'
                                           else '3'),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--settings', default=','.join(spec['settings']),
                        help='comma-separated experiment settings, from %s'
                        % ', '.join(spec['settings']))
    parser.add_argument('--methods', default=','.join(METHODS),
                        help='comma-separated methods, from %s' % ', '.join(METHODS))
    parser.add_argument('--seeds', default=None,
                        help='comma-separated random seeds (default: %s; 0 on the embedded '
                             'MNIST sample)' % spec['seeds'])
    parser.add_argument('--data-dir', default=None,
                        help='directory with the %s files (default: $%s; MNIST falls back to '
                             'an embedded 5,000-image sample when neither is given)'
                        % (experiment, datasets.DATA_DIR_ENV))
    parser.add_argument('--log-dir', default=None,
                        help='where the JSON-lines logs go, one file per run (default: logs/%s; '
                             '%s on the embedded MNIST sample)'
                        % (experiment, SAMPLE_DEFAULTS['log_dir']))
    parser.add_argument('--checkpoint-dir', default=None,
                        help='where checkpoints go, read on resume (default: checkpoints/%s; '
                             '%s on the embedded MNIST sample)'
                        % (experiment, SAMPLE_DEFAULTS['checkpoint_dir']))
    parser.add_argument('--scale', type=float, default=1.0,
                        help='budget: fraction of the protocol\'s epochs; the boost epoch and '
                             'the step-size drop move in proportion (1.0 is the paper\'s)')
    parser.add_argument('--gpus', default='',
                        help='comma-separated GPU ids, e.g. 0,1; empty trains on the CPU')
    parser.add_argument('--kvstore', default='device',
                        help='kvstore type: device, local, dist_sync, ...')
    parser.add_argument('--no-progress', action='store_true',
                        help='no progress bar (one line per epoch is printed all the same)')
    return parser


def parse_args(experiment, argv=None):
    return build_parser(experiment).parse_args(argv)


def _split(text, allowed, what):
    items = [t.strip() for t in text.split(',') if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise SystemExit('error: unknown %s %s; choose from %s'
                         % (what, ', '.join(unknown) or '(none given)', ', '.join(allowed)))
    return items


def contexts_from(gpus):
    ids = [int(i) for i in gpus.split(',') if i.strip()]
    return [mx.gpu(i) for i in ids] if ids else [mx.cpu()]


def load_data(experiment, data_dir_flag):
    data_dir = datasets.data_dir_from(data_dir_flag)
    if experiment == 'mnist':
        if data_dir is None:
            print('notice: no --data-dir and no $%s: using the embedded 5,000-image MNIST '
                  'sample. It is not the full set; the results are not comparable with the '
                  'paper\'s.' % datasets.DATA_DIR_ENV, file=sys.stderr)
            return datasets.load_mnist_sample()
        return datasets.load_mnist(data_dir)
    if data_dir is None:
        raise datasets.DataError('CIFAR-10 needs --data-dir (or $%s): %s'
                                 % (datasets.DATA_DIR_ENV, datasets.CIFAR_LAYOUTS))
    return datasets.load_cifar10(data_dir)


def main(experiment, argv=None):
    args = parse_args(experiment, argv)
    settings = _split(args.settings, EXPERIMENTS[experiment]['settings'], 'setting')
    methods = _split(args.methods, METHODS, 'method')
    try:
        protocols = [PROTOCOLS[s].scaled(args.scale) for s in settings]
    except ValueError as e:
        raise SystemExit('error: --scale: %s' % e)
    try:
        dataset = load_data(experiment, args.data_dir)
    except datasets.DataError as e:
        raise SystemExit('error: %s' % e)
    sample = datasets.data_dir_from(args.data_dir) is None and experiment == 'mnist'
    defaults = SAMPLE_DEFAULTS if sample else dict(
        seeds=EXPERIMENTS[experiment]['seeds'], log_dir='logs/%s' % experiment,
        checkpoint_dir='checkpoints/%s' % experiment)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
    except ValueError:
        raise SystemExit('error: --seeds takes comma-separated integers, got %r' % args.seeds)
    prepared = PREPARE[experiment](dataset)
    fingerprint = dataset.fingerprint()
    contexts = contexts_from(args.gpus)
    command = ' '.join(shlex.quote(a) for a in [sys.argv[0]] + list(
        sys.argv[1:] if argv is None else argv))
    print('data: %s (%d training, %d validation images); logs in %s'
          % (dataset.source, len(prepared.train_y), len(prepared.test_y), args.log_dir))
    for protocol in protocols:
        for method in methods:
            for seed in seeds:
                name = run_name(protocol, method, seed)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter('ignore', DeprecationWarning)
                        train_run(protocol, method, seed, prepared,
                                  log_path=Path(args.log_dir) / (name + '.jsonl'),
                                  checkpoint_dir=Path(args.checkpoint_dir) / name,
                                  contexts=contexts, kvstore=args.kvstore,
                                  progress=not args.no_progress and sys.stderr.isatty(),
                                  command=command, data_source=dataset.source,
                                  data_fingerprint=fingerprint, echo=print)
                except CheckpointError as e:
                    raise SystemExit('error: %s' % e)
    if args.kvstore.startswith('dist') or args.kvstore == 'horovod':
        # Every worker of the job runs this; drawing is left to plot_results.py afterwards.
        print('plots: python scripts/plot_results.py --log-dir %s' % args.log_dir)
        return
    summary = write_report(args.log_dir)
    if summary:
        print('\nplots and summary.md written to %s\n\n%s' % (args.log_dir, summary))
