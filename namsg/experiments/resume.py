"""Where a run stands before it is trained: new, finished, or to be resumed from its newest
checkpoint, decided from its log and checkpoints (writing nothing), or refused, naming the file
and what to do, when they belong to another configuration or are damaged."""

import json
from pathlib import Path
from typing import NamedTuple, Optional

from .checkpoints import CheckpointDamaged, Checkpoints
from .locks import RunBusy, run_lock
from .logs import LogError, read_header, read_log
from .runs import CheckpointError, check_config, config_of


class RunState(NamedTuple):
    """Where a run stands (:func:`run_state`)."""
    #: 'new' (nothing of it on disk), 'finished' (its log is whole; its checkpoints are gone)
    #: or 'resume' (from ``checkpoint``; nothing left to train if ``epoch`` is the last).
    kind: str
    #: The epoch records so far: the log's ('finished') or the checkpoint's ('resume'); empty
    #: for 'new'.
    records: list = []
    #: The newest checkpoint ('resume'); else None.
    checkpoint: Optional[Path] = None
    #: The epochs that ``checkpoint`` holds (training goes on with the next); else 0.
    epoch: int = 0
    #: What will happen, for the user, and what will be repaired.
    note: str = ''
    #: The header to write when the log is rebuilt from the checkpoint (its own, where it is
    #: whole, with the command that trained the run); else None.
    header: Optional[dict] = None


#: Why a dist_* run cannot resume (said where a resume is asked for).
_NO_CHECKPOINT = ('(a dist_* job keeps none: MXNet cannot save the optimizer states that live '
                  'on its servers, so it cannot resume)')


def run_state(header, log_path, checkpoint_dir, distributed=False):
    """What :func:`~namsg.experiments.train.train_run` will do with the run of ``header``, from
    its log and checkpoints, writing nothing. Raises CheckpointError, naming the file and what
    to do, when they belong to another configuration, the newest checkpoint is damaged (a file
    missing or unreadable), or the log is damaged with no checkpoint to rebuild it from.
    ``distributed``: a ``dist_*`` run, which has no checkpoints. Called for every run before
    any is trained, and by train_run itself."""
    epochs = header['protocol']['epochs']
    latest = None if distributed else Checkpoints(checkpoint_dir).latest()
    if latest is not None:
        try:
            state = Checkpoints.read(latest, lambda state: check_config(
                state['config'], header, 'checkpoint %s was made' % latest, log_path,
                checkpoint_dir))
        except CheckpointDamaged as e:
            # Checkpoints are renamed into place whole: this is damage from outside, and
            # silently training from the start would overwrite the epochs logged so far.
            raise CheckpointError(
                'checkpoint %s is damaged: %s; restore the checkpoint folder from a copy to '
                'resume, or move %s%s away to rerun this run from the start'
                % (latest, e, checkpoint_dir,
                   '' if log_path is None else ' and the log %s' % log_path)) from e
        finished = state['epoch'] >= epochs
        note = ('finished earlier (%s): skipped' % latest if finished else
                'resuming from %s: continuing at epoch %d of %d' % (latest, state['epoch'] + 1,
                                                                     epochs))
        repair, kept = _log_repair(header, log_path, checkpoint_dir, state['records'], finished)
        return RunState('resume', state['records'], latest, state['epoch'],
                        note + ('; ' + repair if repair else ''), kept)
    if log_path is None or not Path(log_path).is_file():
        return RunState('new')
    try:
        logged_header, logged = read_log(log_path)
    except LogError as e:
        raise CheckpointError('%s; there is no checkpoint %s to rebuild it from: move the '
                              'log away (or delete it) to rerun this run from the start'
                              % (e, _NO_CHECKPOINT if distributed else 'in %s' % checkpoint_dir)
                              ) from e
    check_config(config_of(logged_header), header, 'log %s was written' % log_path,
                 log_path, None if distributed else checkpoint_dir)
    if len(logged) == epochs:      # finished, and its checkpoints are gone
        return RunState('finished', logged, note='finished earlier (%d epochs in %s): skipped'
                        % (epochs, log_path))
    if distributed:
        raise CheckpointError(
            '%s has %d of %d epochs and there is no checkpoint %s; training again would '
            'overwrite it: move the log away to train this run from the start'
            % (log_path, len(logged), epochs, _NO_CHECKPOINT))
    raise CheckpointError(
        '%s has %d of %d epochs but no checkpoint in %s to resume from; training again would '
        'overwrite it: restore the checkpoint (a run committed unfinished has it under '
        'checkpoints/), or move the log away to train this run from the start'
        % (log_path, len(logged), epochs, checkpoint_dir))


def _log_repair(header, log_path, checkpoint_dir, records, finished):
    """(what will be repaired, the header to keep) for the log of a run resumed or skipped from
    its checkpoint, which holds ``records``: ('', None) when the log holds them. A log cut
    short, lost, or behind its checkpoint (stopped between the two writes) is rewritten from
    the checkpoint's records; its header is kept where it is whole. A whole log of another
    configuration raises CheckpointError, as without a checkpoint: it is not this run's."""
    if log_path is None:
        return '', None
    missing = False
    try:
        _, logged = read_log(log_path)
    except FileNotFoundError:
        missing, problem = True, 'its log %s was missing' % log_path
    except OSError as e:
        problem = 'its log %s could not be read (%s)' % (log_path, e.strerror or e)
    except LogError as e:
        problem = 'its log %s was damaged (%s)' % (log_path, e.why)
    else:
        if logged == json.loads(json.dumps(records)):
            return '', None
        problem = 'its log %s held %d of the checkpoint\'s %d epochs' % (log_path, len(logged),
                                                                         len(records))
    kept = read_header(log_path)
    if kept is not None:
        check_config(config_of(kept), header, 'log %s was written' % log_path, log_path,
                     checkpoint_dir)
    if not finished:
        # Rewritten whole after every epoch, with the header of the command that resumes it.
        return '%s: rewritten from the checkpoint after the next epoch' % problem, None
    if kept is not None:
        return ('%s: rebuilt from the checkpoint, keeping its header (with the command that '
                'trained the run)' % problem), kept
    return ('%s: rebuilt from the checkpoint, with this command in its header%s'
            % (problem, '' if missing else ' (its own could not be read)')), None


def check_run(header, log_path, checkpoint_dir):
    """:func:`run_state` as the check before any training makes it, writing nothing: the
    RunState, or None if another process is training the run (it is checked when its turn
    comes, by train_run under the run's lock). It reads under the lock, so that no checkpoint
    is read while another process replaces it. The ranks of a ``dist_*`` or ``horovod`` job
    read without it; their rank 0 locks the run in train_run."""
    kvstore = header['kvstore']
    if kvstore.startswith('dist') or kvstore == 'horovod':
        return run_state(header, log_path, checkpoint_dir, kvstore.startswith('dist'))
    try:
        with run_lock([log_path, checkpoint_dir], header['run'], create=False):
            return run_state(header, log_path, checkpoint_dir)
    except RunBusy:
        return None
