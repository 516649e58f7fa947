"""Build the fused ARSG operator ahead of time, e.g. on a cluster whose home directories are
read-only or shared between machines (run it once per MXNet version and CPU kind, with the same
``$NAMSG_KERNEL_CACHE`` as the jobs)::

    python -m namsg.kernels build            # prints the library's path; exit status 1 if it
    python -m namsg.kernels build --force    # cannot be built or loaded, with the reason
"""

import argparse
import logging
import sys

from namsg import kernels


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m namsg.kernels',
        description='Build the fused ARSG operator into the kernel cache ($NAMSG_KERNEL_CACHE, '
                    'default ~/.cache/namsg) and check that MXNet loads it.')
    commands = parser.add_subparsers(dest='command', required=True)
    build = commands.add_parser('build', help='compile the library unless an intact one is '
                                'cached, load it, and print its path')
    build.add_argument('--force', action='store_true',
                       help='rebuild even if an intact library is cached (default: off)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        path = kernels.build(force=args.force)
    except kernels.FusedUnavailable as e:
        logging.error('namsg.kernels: cannot build the fused operator: %s', e)
        return 1
    if not kernels.load():
        logging.error('namsg.kernels: %s was built but MXNet cannot load it: %s', path,
                      kernels._state['error'])
        return 1
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
