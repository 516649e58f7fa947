"""Redraw Figure 1 of the paper (gain factor and error-variance limit against tau)."""

import argparse

from namsg.experiments.plots import plot_figure1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default='logs/figure1_dynamics.png',
                        help='PNG file to write (default: logs/figure1_dynamics.png)')
    parser.add_argument('--beta', type=float, default=0.999,
                        help='momentum decay rate beta (default: 0.999)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    plot_figure1(args.out, beta=args.beta)
    print('wrote', args.out)


if __name__ == '__main__':
    main()
