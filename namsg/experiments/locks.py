"""One process per run: the files a run writes are locked while a process checks or trains it,
so that two processes never train one run at once."""

import contextlib
import logging
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:     # Windows: runs are not locked (see run_lock)
    fcntl = None

logger = logging.getLogger(__name__)


class RunBusy(Exception):
    """Another process is training run ``run``: it holds the lock of ``path``, a file the run
    writes (``holder``: 'pid N on HOST', as that process wrote it, or None)."""

    def __init__(self, run, path, holder):
        super().__init__('%s is being trained by another process%s (it holds the lock on %s)'
                         % (run, ', ' + holder if holder else '', path))
        self.run, self.path, self.holder = run, path, holder


class WaitInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (``interrupt``: the KeyboardInterrupt it raised) while this process
    waited for the lock of run ``run`` that another process holds (``holder``: 'pid N on HOST',
    as that process wrote it, or None): this process held none of the run's files and trained
    nothing of it; the other process goes on with the run."""

    def __init__(self, run, holder, interrupt):
        super().__init__(run, holder)
        self.run, self.holder, self.interrupt = run, holder, interrupt


def _holder(fd):
    """'pid N on HOST' as the process holding the lock file open at ``fd`` wrote it, or None."""
    try:
        return os.pread(fd, 200, 0).decode('utf-8', 'replace').strip() or None
    except OSError:
        return None


def _lock_file(path):
    path = Path(path)
    return path.parent / ('.%s.lock' % path.name)


# A process that only checks a run, or skips it as finished, holds its lock for milliseconds;
# one that trains it holds it for the whole run. Two processes started together walk the same
# runs in step, so a lock held no longer than this is the other's check, not a run being trained
# (without the wait, finished runs were put off as "being trained by another process").
_CHECK_HOLD = 3.0       # seconds


def _lock(path, run, wait):
    """An open descriptor holding the exclusive flock of ``path``'s lock file (see run_lock),
    or None where the file system cannot lock. Ctrl-C or SIGTERM while it waits for another
    process raises WaitInterrupted."""
    lock_file = _lock_file(path)
    deadline = time.monotonic() + _CHECK_HOLD
    holder = None
    try:
        while True:
            fd = os.open(str(lock_file), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise RunBusy(run, path, holder) from None
            except OSError as e:        # e.g. ENOLCK on a network file system without locks
                os.close(fd)
                logger.warning(
                    '%s is not locked (%s): make sure no other process trains %s at the same '
                    'time', path, e.strerror or e, run)
                return None
            except BaseException:       # Ctrl-C while waiting
                holder = _holder(fd)
                os.close(fd)
                raise
            # The last holder removes the file as it lets go: a lock taken on a file opened
            # just before that protects nothing, as the next process makes a new file. Take it
            # again.
            try:
                current = os.stat(str(lock_file))
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                os.ftruncate(fd, 0)
                os.write(fd, ('pid %d on %s' % (os.getpid(), socket.gethostname())).encode())
                return fd
            os.close(fd)
    except KeyboardInterrupt as e:
        raise WaitInterrupted(run, holder, e) from e


#: The file in each folder :func:`run_lock` makes, until a run's files are written below it:
#: the folder was made for runs, not by the user, so whichever process leaves it empty (not
#: necessarily the one that made it) removes it.
MADE_MARK = '.namsg-made'


@contextlib.contextmanager
def run_lock(paths, run, wait=False, create=True):
    """Hold the files run ``run`` writes (``paths``: its log, its checkpoint folder) for this
    process alone, so that two processes never train one run at once.

    Each path gets a lock file ``.NAME.lock`` beside it, held with an exclusive ``flock`` and
    naming this process. Without ``wait``, a path another process holds for longer than a check
    takes (3 s) raises RunBusy (and this process holds none of them); with ``wait``, this blocks
    until the other lets go (Ctrl-C or SIGTERM raises WaitInterrupted). ``create=False`` (a
    check that writes nothing) skips paths whose folder does not exist yet: no other process
    has begun writing there. A process that dies, even by SIGKILL, loses its locks with it, so
    a lock file it leaves behind locks nothing. Without flock (Windows; a file system that
    refuses it, with a warning) the run is not locked.

    A run stopped before its first epoch leaves nothing behind, however many processes share
    its folders: the folders made here hold a MADE_MARK file until a run's files are written
    below them (:func:`keep_folders`). On leaving, the lock files are removed, the paths that
    did not exist when this call began where they are still empty, and then each folder above
    them that holds nothing but its MADE_MARK, whichever process made it, up to the first that
    holds anything (another process's run, a file) or was not made here (folders that were
    there are kept, empty or not).

    Raises
    ------
    RunBusy
        Another process holds a path (without ``wait``).
    WaitInterrupted
        Ctrl-C or SIGTERM while waiting for another process.
    """
    used, held, new_paths = [], [], []
    try:
        for path in paths:
            if fcntl is None or path is None:
                continue
            path = Path(path)
            new = not path.exists()     # a checkpoint folder is made by the first epoch
            if not path.parent.is_dir() and not create:
                continue
            for attempt in range(3):
                try:
                    _make_folders(path.parent)
                    fd = _lock(path, run, wait)
                    break
                except FileNotFoundError:   # another process removed a folder it left empty
                    if attempt == 2:
                        raise
            used.append(path)
            if new:
                new_paths.append(path)
            if fd is not None:
                held.append((path, fd))
        yield
    finally:
        # The run's own paths while its locks keep other processes out of them; the folders
        # around them (shared with other runs) once the lock files are gone from them.
        for path in sorted(new_paths, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):      # not empty, not a folder, or gone
                path.rmdir()
        for path, fd in reversed(held):
            with contextlib.suppress(OSError):
                os.unlink(str(_lock_file(path)))      # while locked: see _lock
            os.close(fd)
        for path in used:
            if path.exists():
                keep_folders(path)
            else:
                _leave(path.parent)


def keep_folders(path):
    """The folders above ``path``, a file or folder a run has written, are kept for good: their
    MADE_MARK files (see :func:`run_lock`) are removed."""
    for folder in Path(path).parents:
        with contextlib.suppress(OSError):          # not made by run_lock, or gone
            (folder / MADE_MARK).unlink()


def _leave(folder):
    """Remove ``folder`` and its parents, the deepest first, while each holds nothing but its
    MADE_MARK; stop at the first that holds anything else or has no MADE_MARK."""
    while folder != folder.parent:
        try:
            if os.listdir(folder) != [MADE_MARK]:
                return
            (folder / MADE_MARK).unlink()
        except OSError:         # gone, unreadable, or its mark taken by another process leaving
            return
        try:
            folder.rmdir()
        except OSError:
            # Another process began writing in it between the two calls: it is theirs now, and
            # marked again for the last one of them that leaves it empty.
            with contextlib.suppress(OSError):
                (folder / MADE_MARK).touch()
            return
        folder = folder.parent


def _make_folders(folder):
    """Make ``folder`` and its missing parents, the outermost first, each with a MADE_MARK
    file (see :func:`run_lock`). FileNotFoundError: another process removed a parent as it
    was left empty."""
    missing = []
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir()
        except FileExistsError:     # another process made it, and marks it
            continue
        (made / MADE_MARK).touch()
