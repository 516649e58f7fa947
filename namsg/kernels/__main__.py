"""The fused ARSG update's kernel cache from the command line (``$NAMSG_KERNEL_CACHE``, default
``~/.cache/namsg``).

Build the library this MXNet uses ahead of time (the direct call's; on MXNet 1.7 to 1.9, where
that one cannot be built or loaded, the extension operator's), e.g. on a cluster whose home
directories are read-only or shared between machines (once per CPU kind, with the same
``$NAMSG_KERNEL_CACHE`` as the jobs)::

    python -m namsg.kernels build            # prints the path of the library loaded; exit
    python -m namsg.kernels build --force    # status 1 if none can be built or loaded, with
                                             # the reasons

See what the cache holds, and remove what this MXNet does not use (the cache only grows: a
new namsg, compiler or CPU builds a new direct-call library, and where the operator stands in,
each MXNet version its own operator library)::

    python -m namsg.kernels list             # each library: MXNet version ('any' for the
                                             # direct call's), size, age, and whether this
                                             # MXNet uses it
    python -m namsg.kernels clean            # remove the libraries this MXNet does not use
    python -m namsg.kernels clean --all      # remove every library (rebuilt on next use)

``clean`` waits for a build or load in progress in the cache and never removes a library that
another process is building or loading; processes that have loaded a library keep it. Each
command exits with status 1 and says why where the cache cannot be there (its path, or a folder
above it, is a file) or cannot be read or written.
"""

import argparse
import logging
import sys

import mxnet as mx

from namsg import kernels


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m namsg.kernels',
        description='Build, list or clean the fused ARSG update libraries in the kernel cache '
                    '($NAMSG_KERNEL_CACHE, default ~/.cache/namsg).')
    commands = parser.add_subparsers(dest='command', required=True)
    build = commands.add_parser('build', help='compile the library this MXNet uses unless an '
                                'intact one is cached, load it, and print its path')
    build.add_argument('--force', action='store_true',
                       help='rebuild even if an intact library is cached (default: off)')
    commands.add_parser('list', help="the cache's libraries: MXNet version, size, age, and "
                        "whether this MXNet uses it ('yes, stand-in': the operator, kept for "
                        'where the direct call cannot be had)')
    clean = commands.add_parser('clean', help='remove the libraries that this MXNet does not '
                                'use, and what interrupted builds left behind')
    clean.add_argument('--all', action='store_true',
                       help="remove every library, this MXNet's too (default: keep this MXNet's)")
    return parser.parse_args(argv)


# Where the cache cannot be used, what the user can do about it.
_WHAT_TO_DO = (': set $NAMSG_KERNEL_CACHE to a directory this user may write (or unset it '
               'for the default ~/.cache/namsg)')


def _size(size):
    if size < 1000:
        return '%d B' % size
    return '%.1f kB' % (size / 1e3) if size < 1e6 else '%.1f MB' % (size / 1e6)


def _age(seconds):
    for unit, length in (('d', 86400), ('h', 3600), ('min', 60)):
        if seconds >= length:
            return '%d %s' % (seconds // length, unit)
    return '%d s' % seconds


def list_cache():
    directory = kernels.library._cache_dir()
    try:
        made = kernels.cache.cache_exists(directory)
        libraries = kernels.cached_libraries(directory)
        leftovers = kernels.library._stale_temporaries(directory) if made else []
    except OSError as e:
        logging.error('namsg.kernels: cannot list the kernel cache %s: %s%s', directory,
                      e.strerror or e, _WHAT_TO_DO)
        return 1
    reasons = [kernels.library._reason(form) for form in kernels.library.fused_forms()]
    print('kernel cache %s: %d librar%s, %s%s%s' % (
        directory, len(libraries), 'y' if len(libraries) == 1 else 'ies',
        _size(sum(lib.size for lib in libraries)),
        '' if made else ' (not made yet: the first fused update or `python -m namsg.kernels '
                        'build` makes it)',
        '' if None in reasons else ' (this MXNet uses none: %s)' % '; '.join(reasons)))
    if libraries:
        rows = [('library', 'MXNet', 'size', 'age', 'this MXNet %s' % mx.__version__)]
        rows += [(lib.path.name, 'any' if lib.form == kernels.DIRECT else
                  lib.mxnet_version or '?', _size(lib.size), _age(lib.age), lib.owner())
                 for lib in libraries]
        widths = [max(len(row[k]) for row in rows) for k in range(4)]
        for row in rows:
            print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)) + '  ' +
                  row[4])
    if leftovers:
        print('%d temporary files of interrupted builds (removed by the next build or by '
              'clean), or of a build in progress' % len(leftovers))
    return 0


def clean_cache(everything):
    directory = kernels.library._cache_dir()
    try:
        removed, freed = kernels.clean_cache(directory, everything=everything)
    except OSError as e:
        logging.error('namsg.kernels: cannot clean the kernel cache %s: %s%s', directory,
                      e.strerror or e, _WHAT_TO_DO)
        return 1
    for path in removed:
        print('removed %s' % path)
    print('%s: removed %d files, %s' % (directory, len(removed), _size(freed)))
    return 0


def build(force):
    """Build the forms this MXNet may take, best first, until one builds; then load as a
    process does (the direct call first; on MXNet 1.7 to 1.9 the operator stands in where the
    direct call does not build or load)."""
    reasons = []
    for form in kernels.library.fused_forms():
        try:
            path = kernels.build(force=force, form=form)
            break
        except kernels.FusedUnavailable as e:
            reasons.append(str(e))
    else:
        logging.error('namsg.kernels: cannot build the fused ARSG update: %s',
                      '; '.join(dict.fromkeys(reasons)))
        return 1
    if not kernels.load():
        logging.error('namsg.kernels: %s was built but MXNet cannot load it: %s', path,
                      kernels._state['error'])
        return 1
    print(kernels._state['path'])
    return 0


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.command == 'list':
        return list_cache()
    if args.command == 'clean':
        return clean_cache(args.all)
    return build(args.force)


if __name__ == '__main__':
    sys.exit(main())
