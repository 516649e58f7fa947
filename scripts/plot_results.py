"""Draw the paper's panels and a summary table from the JSON-lines logs of reproduce_*.py,
optionally beside reference runs (e.g. the committed ones in logs/) of the same protocol, so
that a rerun shows whether it reproduces them."""

import argparse
from pathlib import Path

from namsg.experiments.cli import HelpFormatter, check_writable
from namsg.experiments.logs import LogError
from namsg.experiments.plots import write_report


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--log-dir', default='runs/mnist',
                        help='directory with <setting>/<method>/seed<k>.jsonl logs')
    parser.add_argument('--reference', default=None, nargs='+', action='append',
                        help='directories of reference logs (e.g. logs/mnist), whose runs '
                             'of the same protocol are drawn dashed beside them; of several '
                             '(--reference A B, or the flag given again), each setting is '
                             'compared with the one holding the most runs of its protocol '
                             '(default: none)')
    parser.add_argument('--out-dir', default=None,
                        help='where <setting>.png and summary.md go (default: the log dir)')
    parser.add_argument('--target', default='ADAM',
                        help='method whose final training loss the summary counts epochs to')
    parser.add_argument('--data-note', default=None,
                        help='words about the data for the titles, e.g. "JPEG-recompressed '
                             'copy" (default: none)')
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.reference is not None:      # [[a, b], [c]] from --reference a b --reference c
        args.reference = [folder for group in args.reference for folder in group]
    return args


def main(argv=None):
    args = parse_args(argv)
    # Every input before any drawing: a mistyped folder is named as such, not as "no runs".
    for flag, folder in [('--log-dir', args.log_dir)] + [('--reference', folder) for folder
                                                          in args.reference or []]:
        if folder is not None and not Path(folder).is_dir():
            raise SystemExit('error: %s %s %s; give the folder that holds the '
                             '<setting>/<method>/seed<k>.jsonl logs'
                             % (flag, folder, 'is not a directory' if Path(folder).exists()
                                else 'does not exist'))
    check_writable('--out-dir', args.out_dir or args.log_dir)
    try:
        summary = write_report(args.log_dir, args.out_dir, args.target, args.reference,
                               args.data_note)
    except LogError as e:
        raise SystemExit('error: %s' % e)
    if not summary:
        raise SystemExit('error: --log-dir %s: no finished runs (no complete '
                         '<setting>/<method>/seed<k>.jsonl logs)' % args.log_dir)
    print(summary)
    print('plots (<setting>.png) and summary.md written to %s' % (args.out_dir or args.log_dir))


if __name__ == '__main__':
    main()
