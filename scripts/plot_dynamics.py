"""Redraw Figure 1 of the paper (gain factor and error-variance limit against tau)."""

import argparse
import os
from pathlib import Path

from matplotlib.backend_bases import FigureCanvasBase

from namsg.experiments.plots import plot_figure1

#: The image formats matplotlib writes by itself, by extension (pgf needs LaTeX; raw and rgba
#: are bare pixel buffers, not image files).
IMAGE_FORMATS = sorted(set(FigureCanvasBase.get_supported_filetypes()) - {'pgf', 'raw', 'rgba'})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default='logs/figure1_dynamics.png',
                        help='image file to write, in an existing folder; its extension gives '
                             'the format (default: logs/figure1_dynamics.png)')
    parser.add_argument('--beta', type=float, default=0.999,
                        help='momentum decay rate beta, in (0, 1) (default: 0.999)')
    args = parser.parse_args(argv)
    # The analysis (namsg.dynamics, eq. 10-15) is of a momentum that decays: 0 < beta < 1.
    if not 0.0 < args.beta < 1.0:
        parser.error('argument --beta: must lie in (0, 1), strictly between 0 and 1; got %g'
                     % args.beta)
    suffix = Path(args.out).suffix.lower().lstrip('.')
    if suffix not in IMAGE_FORMATS:
        parser.error('argument --out: %s does not end in an image extension; use one of %s'
                     % (args.out, ', '.join('.' + f for f in IMAGE_FORMATS)))
    folder = Path(args.out).parent
    if not folder.is_dir():
        parser.error('argument --out: the folder %s %s; create it first or choose another --out'
                     % (folder, 'is not a directory' if folder.exists() else 'does not exist'))
    if not os.access(folder, os.W_OK) or Path(args.out).is_dir():
        parser.error('argument --out: cannot write %s; choose another --out' % args.out)
    return args


def main(argv=None):
    args = parse_args(argv)
    plot_figure1(args.out, beta=args.beta)
    print('wrote', args.out)


if __name__ == '__main__':
    main()
