"""Draw the paper's panels and a summary table from the JSON-lines logs of reproduce_*.py."""

import argparse

from namsg.experiments.plots import write_report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--log-dir', default='logs/mnist',
                        help='directory with <setting>/<method>/seed<k>.jsonl logs')
    parser.add_argument('--out-dir', default=None,
                        help='where <setting>.png and summary.md go (default: the log dir)')
    parser.add_argument('--reference', default='ADAM',
                        help='method whose final training loss the summary counts epochs to')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    summary = write_report(args.log_dir, args.out_dir, args.reference)
    if not summary:
        raise SystemExit('error: no finished runs under %s' % args.log_dir)
    print(summary)


if __name__ == '__main__':
    main()
