"""B.5's grid search: train every tuple of each method's grid under a protocol and rank them by
final training loss; for ARSG and ARSGB also run the first stage of the observation boost
(OBSB: a short step-size search with a small mu) and report the step size it picks."""

import argparse
import math
import shlex
import sys
from pathlib import Path

from namsg.experiments import cli
from namsg.experiments import data as datasets
from namsg.experiments.grid import (check_grid, first_stage, run_grid, subset, summary_table,
                                    tuple_name)
from namsg.experiments.hparams import METHODS, PROTOCOLS
from namsg.experiments.locks import WaitInterrupted
from namsg.experiments.files import write_atomic
from namsg.experiments.runs import CheckpointError

#: Default folders of a search's logs, as reproduce_mnist.py keeps runs on the embedded MNIST
#: sample (runs/mnist-sample) apart from runs on the full set (runs/mnist): a point trained on
#: one is another run than the same point on the other, and would refuse it.
LOG_DIR = 'runs/grid/logs'
SAMPLE_LOG_DIR = 'runs/grid-sample/logs'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--setting', default='mnist_logreg', choices=sorted(PROTOCOLS),
                        help='the experiment whose protocol is searched (default: '
                             'mnist_logreg)')
    parser.add_argument('--methods', default='ARSG',
                        help='comma-separated methods to tune, from %s (default: ARSG)'
                        % ', '.join(METHODS))
    parser.add_argument('--epochs', type=int, default=None,
                        help='epochs per grid point (default: the protocol\'s, 20 for '
                             'mnist_logreg); fewer is a budget')
    parser.add_argument('--subset', type=int, default=None,
                        help='train on the first N training images only, N at most the '
                             'data\'s (default: all)')
    parser.add_argument('--search-iterations', type=int, default=None,
                        help='iterations of the first-stage step-size search for ARSG and '
                             'ARSGB (default: one epoch\'s)')
    parser.add_argument('--data-dir', default=None,
                        help='data directory (default: $NAMSG_DATA_DIR; MNIST falls back to '
                             'the embedded sample)')
    parser.add_argument('--log-dir', default=None,
                        help='one log per grid point, <log dir>/<setting>/<method>/<tuple>.jsonl, '
                             'and <log dir>/<setting>/grid_summary.md (default: %s; %s on the '
                             'embedded MNIST sample)' % (LOG_DIR, SAMPLE_LOG_DIR))
    parser.add_argument('--checkpoint-dir', default=None,
                        help='checkpoints per grid point, read on resume (default: the log '
                             'dir\'s checkpoints/ sub-folder, e.g. %s/checkpoints)' % LOG_DIR)
    parser.add_argument('--gpus', default='', help='comma-separated GPU ids (default: empty, '
                                                   'the CPU)')
    return parser.parse_args(argv)


def check_boost(protocol, methods):
    """ARSGB boosted from epoch 1 is not ARSGB: refuse an --epochs budget that moves the boost
    there, as reproduce_*.py refuse such a --scale (``cli.check_boost``, whose words name
    --scale)."""
    if 'ARSGB' not in methods or protocol.boost_epoch > 1:
        return
    full = PROTOCOLS[protocol.setting]
    least = min(e for e in range(1, full.epochs + 1)
                if full.scaled(e / full.epochs).boost_epoch > 1)
    raise SystemExit('error: --epochs %d moves ARSGB\'s boost in %s to epoch 1 of %d (boosted '
                     'from the start, so it would not be ARSGB); use --epochs %d or more, or '
                     'leave ARSGB out of --methods'
                     % (protocol.epochs, protocol.setting, protocol.epochs, least))


def main(argv=None):
    with cli.sigterm_as_ctrl_c():
        _main(argv)


def _main(argv):
    args = parse_args(argv)
    cli.check_namsg_environment()
    methods = cli._split(args.methods, METHODS, '--methods')
    protocol = PROTOCOLS[args.setting]
    epochs = protocol.epochs if args.epochs is None else args.epochs
    if not 1 <= epochs <= protocol.epochs:
        raise SystemExit('error: --epochs must lie in [1, %d] (the protocol\'s epochs), got %d'
                         % (protocol.epochs, epochs))
    if args.subset is not None and args.subset < 1:
        raise SystemExit('error: --subset must be >= 1, got %d' % args.subset)
    if args.search_iterations is not None and args.search_iterations < 1:
        raise SystemExit('error: --search-iterations must be >= 1, got %d'
                         % args.search_iterations)
    protocol = protocol.scaled(epochs / protocol.epochs)._replace(epochs=epochs)
    check_boost(protocol, methods)
    for flag, value in (('--data-dir', args.data_dir), ('--log-dir', args.log_dir),
                        ('--checkpoint-dir', args.checkpoint_dir)):
        if value is not None and not value.strip():
            raise SystemExit('error: %s is empty; give a folder, or leave the flag out for its '
                             'default' % flag)
    sample = protocol.dataset == 'mnist' and datasets.data_dir_from(args.data_dir) is None
    log_dir = args.log_dir or (SAMPLE_LOG_DIR if sample else LOG_DIR)
    # As reproduce_*.py: the checkpoints follow the log dir, so that two searches with other
    # log dirs (and other budgets) never meet in one checkpoint folder.
    checkpoint_dir = (args.checkpoint_dir if args.checkpoint_dir is not None
                      else str(Path(log_dir) / 'checkpoints'))
    contexts = cli.contexts_from(args.gpus)
    cli.check_data_dir(protocol.dataset, args.data_dir)
    cli.check_writable('--log-dir', log_dir)
    cli.check_writable('--checkpoint-dir', checkpoint_dir)
    dataset, prepared = cli.load_data_or_exit(protocol.dataset, args.data_dir)
    available = len(prepared.train_y)
    if args.subset is not None and args.subset > available:
        # Else the whole data would be trained on, under a subset's name.
        raise SystemExit('error: --subset %d: the data (%s) has %s training images; give '
                         '--subset %d or less%s' % (args.subset, dataset.source,
                                                    format(available, ','), available,
                                                    ', or --data-dir with the full MNIST'
                                                    if sample else ''))
    prepared = subset(prepared, args.subset)
    command = ' '.join(shlex.quote(a) for a in [sys.argv[0]] + list(
        sys.argv[1:] if argv is None else argv))
    fingerprint = dataset.fingerprint()
    with cli.interrupt_says('interrupted before the first point: nothing was written; the '
                            'same command starts again'):
        for method in methods:
            # Every point's log and checkpoint, before the first-stage search or any training.
            try:
                check_grid(protocol, method, prepared, log_dir, checkpoint_dir,
                           contexts=contexts, command=command, data_source=dataset.source,
                           data_fingerprint=fingerprint)
            except CheckpointError as e:
                raise SystemExit('error: %s' % e)
    print('data: %s; %d epochs per point; logs in %s' % (dataset.source, epochs, log_dir))
    results = {}
    try:
        for method in methods:
            search = None
            if method in ('ARSG', 'ARSGB'):
                iterations = args.search_iterations or -(-len(prepared.train_y)
                                                         // protocol.batch_size)
                search = first_stage(protocol, method, prepared, iterations, contexts)
                print('%s first stage (%d iterations): picks a = %g; ranking %s' % (
                    method, iterations, search.best,
                    ', '.join('%g: %.5f' % r for r in search.ranking)))
            rows = run_grid(protocol, method, prepared, log_dir, checkpoint_dir,
                            contexts=contexts, echo=print, command=command,
                            data_source=dataset.source, data_fingerprint=fingerprint)
            results[method] = (rows, search)
            print('\n%s, best first (final training loss after %d epochs):' % (method, epochs))
            for row in rows:
                loss = row['final_train_loss']
                print('  %-40s %s' % (tuple_name(method, row['tuple']),
                                      'diverged' if not math.isfinite(loss) else '%.5f' % loss))
    except CheckpointError as e:
        raise SystemExit('error: %s' % e)
    except WaitInterrupted as e:
        print(cli.waiting_interrupted(e), flush=True)
        raise SystemExit(cli.interrupted_status(e))
    except KeyboardInterrupt as e:
        # Each point's log and checkpoints are whole epochs, renamed into place.
        print('interrupted: the same command skips the finished points and resumes the '
              'interrupted one from its last complete epoch', flush=True)
        raise SystemExit(cli.interrupted_status(e))
    table = summary_table(args.setting, results)
    write_atomic(Path(log_dir) / args.setting / 'grid_summary.md',
                 '# B.5 grid on %s, %d epochs per point\n\nData: %s. Command: `%s`\n\n%s'
                 % (args.setting, epochs, dataset.source, command, table))
    print('\n' + table)


if __name__ == '__main__':
    main()
