"""B.5's grid search for one method on a budget (epochs, training subset); see --help."""

import argparse
import math
import shlex
import sys

from namsg.experiments import cli
from namsg.experiments.grid import run_grid, subset, tuple_name
from namsg.experiments.hparams import METHODS, PROTOCOLS
from namsg.experiments.train import PREPARE


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--setting', default='mnist_logreg', choices=sorted(PROTOCOLS),
                        help='the experiment whose protocol is searched')
    parser.add_argument('--method', default='ARSG', choices=METHODS, help='method to tune')
    parser.add_argument('--epochs', type=int, default=2,
                        help='epochs per grid point (the budget)')
    parser.add_argument('--subset', type=int, default=None,
                        help='train on the first N training images only (default: all)')
    parser.add_argument('--data-dir', default=None,
                        help='data directory (default: $NAMSG_DATA_DIR; MNIST falls back to '
                             'the embedded sample)')
    parser.add_argument('--log-dir', default='logs/grid', help='one log per grid point')
    parser.add_argument('--checkpoint-dir', default='checkpoints/grid',
                        help='checkpoints per grid point')
    parser.add_argument('--gpus', default='', help='comma-separated GPU ids; empty: CPU')
    parser.add_argument('--kvstore', default='device', help='kvstore type')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    protocol = PROTOCOLS[args.setting]
    if args.epochs < 1:
        raise SystemExit('error: --epochs must be >= 1')
    protocol = protocol.scaled(min(1.0, args.epochs / protocol.epochs))._replace(
        epochs=args.epochs)
    dataset = cli.load_data(protocol.dataset, args.data_dir)
    prepared = subset(PREPARE[protocol.dataset](dataset), args.subset)
    rows = run_grid(protocol, args.method, prepared, args.log_dir, args.checkpoint_dir,
                    contexts=cli.contexts_from(args.gpus), kvstore=args.kvstore, echo=print,
                    command=' '.join(shlex.quote(a) for a in sys.argv),
                    data_source=dataset.source)
    print('\nbest first (final training loss after %d epochs):' % args.epochs)
    for row in rows:
        loss = row['final_train_loss']
        print('  %-40s %s' % (tuple_name(args.method, row['tuple']),
                              'diverged' if not math.isfinite(loss) else '%.5f' % loss))


if __name__ == '__main__':
    main()
