"""Checkpoints: one folder per epoch (the network's parameters, the Trainer's states and the
run's own state), written under a temporary name and renamed into place whole, so that the
newest one is always complete; read back with each file checked before any is used."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import mxnet as mx

from .runs import CheckpointError


class CheckpointDamaged(Exception):
    """A file of a checkpoint is missing or cannot be read (``path``, ``why``)."""

    def __init__(self, path, why):
        super().__init__('%s %s' % (path, why))
        self.path, self.why = path, why


class Checkpoints:
    """``root/epoch-NNNN/`` directories, each complete or absent: written under a temporary
    name, then renamed. The newest complete one is the resume point; older ones are removed."""

    def __init__(self, root):
        self.root = Path(root)

    #: The files of a checkpoint (in the order ``read`` checks them), and the keys of its
    #: state.json.
    FILES = ('state.json', 'net.params', 'trainer.states')
    STATE_KEYS = ('config', 'epoch', 'iteration', 'records', 'policy')

    def latest(self):
        """The newest ``epoch-NNNN`` directory, or None. Each was renamed into place whole, so
        one that is incomplete was damaged afterwards: ``read`` says so."""
        if not self.root.is_dir():
            return None
        done = sorted(p for p in self.root.glob('epoch-*') if p.is_dir())
        return done[-1] if done else None

    @classmethod
    def read(cls, checkpoint, check=None):
        """The state.json of ``checkpoint`` (a dict), after reading each of its files as
        :func:`~namsg.experiments.train.train_run` will load it; CheckpointDamaged names the
        first file that is missing or cannot be read. ``check(state)``, if given, runs as soon
        as state.json is read, and a CheckpointError it raises passes through: a checkpoint of
        another configuration is named as such, whatever its other files hold. Writes
        nothing."""
        import pickle
        state = None
        for name in cls.FILES:
            path = checkpoint / name
            if not path.is_file():
                raise CheckpointDamaged(path, 'is missing')
            try:
                if name == 'net.params':
                    mx.nd.load(str(path))
                elif name == 'trainer.states':
                    pickle.loads(path.read_bytes())     # what Trainer.load_states unpickles
                else:
                    state = json.loads(path.read_text())
                    if check is not None and isinstance(state, dict) and 'config' in state:
                        check(state)
                    missing = [k for k in cls.STATE_KEYS if k not in state]
                    if missing:
                        raise ValueError('no %s in it' % ', '.join(missing))
            except CheckpointError:
                raise
            except Exception as e:   # noqa: BLE001 -- any failure to read means a damaged file
                # MXNet's message ends with its C++ check; the traceback before it names no file.
                lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
                last = lines[-1] if lines else 'empty or cut short'
                kind = type(e).__name__
                raise CheckpointDamaged(path, 'cannot be read (%s: %s)' % (
                    kind, last[len(kind) + 2:] if last.startswith(kind + ': ') else last)) from e
        return state

    def save(self, epoch, net, trainer, state):
        """Write ``epoch``'s checkpoint (``net``'s parameters, ``trainer``'s states, ``state``
        as state.json) whole under ``root``, then remove the older ones."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix='.incomplete-'))
        try:
            net.save_parameters(str(tmp / 'net.params'))
            trainer.save_states(str(tmp / 'trainer.states'))
            (tmp / 'state.json').write_text(json.dumps(state))
            final = self.root / ('epoch-%04d' % epoch)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.root.glob('epoch-*'):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
