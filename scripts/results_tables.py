"""Redraw the results tables of a Markdown file (the README) from the logs they cite.

A table lives between `<!-- results: LOG_DIR:SETTING=LABEL ... -->` and `<!-- /results -->`;
each LOG_DIR:SETTING=LABEL (paths relative to the file's folder, underscores in LABEL print as
spaces) is one group of columns: final training loss, best validation accuracy, epochs to reach
ADAM's final training loss, and the training loss before the step-size drop where it falls
within the runs; CIFAR-10 fine-mode tables add the paper's reported best validation accuracy.
Runs still in progress appear with the epoch they reached. A block `<!-- results grid:
LOG_DIR:SETTING -->` holds a grid search's table (grid_search.py's summary without the first
stage), drawn from every point's log. Without --check the file is rewritten in place
(atomically) when a table changed."""

import argparse
import sys
from pathlib import Path

from namsg.experiments.cli import HelpFormatter
from namsg.experiments.plots import fill_results_blocks
from namsg.experiments.files import write_atomic


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--file', default='README.md',
                        help='the Markdown file whose results tables to redraw '
                             '(default: README.md)')
    parser.add_argument('--check', action='store_true',
                        help='change nothing; exit 1 if a table differs from its logs '
                             '(default: off)')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    path = Path(args.file)
    if not path.is_file():
        raise SystemExit('error: --file %s does not exist' % path)
    text = path.read_text()
    try:
        new = fill_results_blocks(text, root=path.resolve().parent)
    except ValueError as e:
        raise SystemExit('error: %s: %s' % (path, e))
    if new == text:
        print('%s: the results tables match their logs' % path)
        return
    if args.check:
        print('%s: a results table differs from its logs; redraw with `python '
              'scripts/results_tables.py --file %s`' % (path, path), file=sys.stderr)
        raise SystemExit(1)
    write_atomic(path, new)
    print('%s: results tables redrawn from their logs' % path)


if __name__ == '__main__':
    main()
