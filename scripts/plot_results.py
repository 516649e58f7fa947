"""Draw the paper's panels and a summary table from the JSON-lines logs of reproduce_*.py."""

import argparse
from pathlib import Path

from namsg.experiments.hparams import METHODS
from namsg.experiments.plots import load_runs, plot_setting, summary_markdown


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
    out_dir = Path(args.out_dir or args.log_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(args.log_dir)
    if not runs:
        raise SystemExit('error: no finished runs under %s' % args.log_dir)
    summary = []
    for setting, method_runs in sorted(runs.items()):
        ordered = {m: method_runs[m] for m in METHODS if m in method_runs}
        plot_setting(ordered, setting, out_dir / ('%s.png' % setting))
        summary += ['## %s' % setting, '', summary_markdown(ordered, args.reference)]
        print('wrote', out_dir / ('%s.png' % setting))
    (out_dir / 'summary.md').write_text('\n'.join(summary))
    print('wrote', out_dir / 'summary.md')
    print('\n'.join(summary))


if __name__ == '__main__':
    main()
