"""What identifies a run: its name (protocol, method, seed), the header line of its log (its
configuration, and what describes the machine), and whether a log or checkpoint found on disk
was made by this configuration of the run."""

import json
import os
import platform
import subprocess
from pathlib import Path

import mxnet as mx
import numpy as np

import namsg
from .data import DATA_DIR_ENV, is_embedded_sample
from .hparams import optimizer_kwargs


class CheckpointError(Exception):
    """A run's log or checkpoint exists but cannot be used as it is: it belongs to another
    configuration, is damaged, or is unfinished with no checkpoint to resume from. The
    message names the file and what to do; nothing was written."""


def run_name(protocol, method, seed):
    """``<setting>/<method>/seed<seed>``: the run's name in messages, and its path (without
    ``.jsonl``) below the log and checkpoint folders."""
    return '%s/%s/seed%d' % (protocol.setting, method, seed)


def versions():
    """What made a log besides its configuration, for its header: the versions of namsg (and
    its git commit, ``-modified`` when tracked files differ from it, where the package runs
    from a checkout), MXNet, NumPy and Python, the CPU model and ``$OMP_NUM_THREADS``. The CNNs
    reproduce bit for bit only on the same code, CPU instruction set and thread count (see
    :mod:`namsg.experiments.compare`), so a log says which it had. Not part of the run's
    identity (:func:`config_of`)."""
    return dict(namsg=namsg.__version__, namsg_commit=_commit(), mxnet=mx.__version__,
                numpy=np.__version__, python=platform.python_version(), cpu=_cpu_model(),
                omp_num_threads=os.environ.get('OMP_NUM_THREADS', 'unset'))


def _commit():
    """The checkout's commit, or None where namsg is not run from a git checkout."""
    folder = Path(namsg.__file__).resolve().parent.parent
    try:
        def git(*args):
            return subprocess.run(['git', '-C', str(folder)] + list(args), capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
        commit = git('rev-parse', '--short=12', 'HEAD')
        changed = git('status', '--porcelain', '--untracked-files=no', '--', 'namsg')
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ('-modified' if changed else '')


def _cpu_model():
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_header(protocol, method, seed, prepared, contexts=None, kvstore='device',
               overrides=None, command=None, data_source='', data_fingerprint=None,
               workers=None):
    """The header line of a run's log: its configuration (what must match to resume) and what
    describes the machine (versions, command, data path). ``workers``: the job's worker count,
    for a ``dist_*`` or ``horovod`` kvstore."""
    spec, kwargs = optimizer_kwargs(protocol, method, overrides)
    header = dict(type='header', run=run_name(protocol, method, seed), method=method, seed=seed,
                  protocol=protocol._asdict(), optimizer=spec.name,
                  optimizer_params={k: v for k, v in kwargs.items() if k != 'lr_scheduler'},
                  boost_epoch=protocol.boost_epoch if spec.boost else None,
                  data=data_fingerprint, data_source=data_source,
                  contexts=[str(c) for c in contexts or [mx.cpu()]], kvstore=kvstore,
                  train_size=len(prepared.train_y), test_size=len(prepared.test_y),
                  versions=versions(), command=command)
    if kvstore.startswith('dist') or kvstore == 'horovod':
        header['workers'] = workers
    return header


def config_of(header):
    """What must match for a checkpoint to be resumed: everything but what describes the
    machine rather than the run (versions, command line, data path)."""
    return {k: v for k, v in header.items() if k not in ('versions', 'command', 'data_source')}


def _describe_data(data):
    """A header's ``data`` entry in words (older logs hold a string)."""
    if not isinstance(data, dict):
        return repr(data)
    return '%s training / %s validation images%s, digest %s' % (
        format(data.get('train'), ','), format(data.get('test'), ','),
        ' of the embedded MNIST sample' if is_embedded_sample(data) else '', data.get('sha256'))


class _Absent:
    """What a key holds in a configuration that lacks it (an older log's header)."""

    def __repr__(self):
        return 'absent'


_ABSENT = _Absent()


def _changes(key, then, now):
    """``'KEY: THEN then, NOW now'`` for each value that differs between ``then`` and ``now``,
    named by its path inside them (``protocol.scale``): a nested dict (the protocol, the
    optimizer's parameters) is not printed whole for the one value that changed."""
    if isinstance(then, dict) and isinstance(now, dict):
        return [change for k in sorted(set(then) | set(now), key=str)
                if then.get(k, _ABSENT) != now.get(k, _ABSENT)
                for change in _changes('%s.%s' % (key, k), then.get(k, _ABSENT),
                                       now.get(k, _ABSENT))]
    return ['%s: %r then, %r now' % (key, then, now)]


def check_config(saved, header, what, log_path, checkpoint_dir):
    """Raise CheckpointError unless ``saved`` (a config read back from JSON) is this run's,
    saying what differs and how to keep both: the run's log and checkpoints go together, so
    the advice names both (removing one of them only meets the other's refusal)."""
    now = json.loads(json.dumps(config_of(header)))
    if saved == now:
        return
    keys = sorted(k for k in set(saved) | set(now)
                  if saved.get(k, _ABSENT) != now.get(k, _ABSENT))
    differences = []
    for k in keys:
        if k == 'data':
            # The sample has no folder to give: the advice that fits names how to get it back.
            advice = ('leave out --data-dir and unset $%s to resume it on the sample'
                      % DATA_DIR_ENV if is_embedded_sample(saved.get(k)) else
                      'give the --data-dir it was trained on to resume it')
            differences.append('other data: %s then; %s now, from %s (%s)'
                               % (_describe_data(saved.get(k)), _describe_data(now.get(k)),
                                  header.get('data_source', 'unknown source'), advice))
        else:
            differences += _changes(k, saved.get(k, _ABSENT), now.get(k, _ABSENT))
    kept = [(flag, files) for flag, files, path in [
        ('--log-dir', 'the log %s' % log_path, log_path),
        ('--checkpoint-dir', 'the checkpoints in %s' % checkpoint_dir, checkpoint_dir)]
        if path is not None]
    raise CheckpointError(
        '%s by another configuration of this run (%s). Its files are kept: to train this '
        'configuration, choose another %s, or move %s away'
        % (what, '; '.join(differences), ' and '.join(flag for flag, _ in kept),
           ' and '.join(files for _, files in kept)))
