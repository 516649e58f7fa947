"""Files written whole or not at all: whatever stops the writer (Ctrl-C, SIGTERM, a full disk,
another process writing the same file), readers and later runs find the old file or the new
one, never half of one."""

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def replacing(path):
    """A temporary file name for the block to write ``path`` to; when the block ends without
    an error, that file replaces ``path`` in one rename, with the mode a plain ``open()`` gives.
    It lies beside ``path`` (a rename within one folder is atomic) and ends in the same suffix
    (for writers that take the format from it, as matplotlib's ``savefig``); on an error it is
    removed and ``path`` is left as it was. The folder is made if need be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.%s.' % path.name, suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())      # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(path, text):
    """Write ``text`` to ``path`` through :func:`replacing`, synced to disk before the rename."""
    with replacing(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
