"""B.5's grid search: every tuple of a method's grid trained under a protocol (optionally on a
budget or a subset), ranked by final training loss; for ARSG and ARSGB also OBSB's first stage,
the short step-size search of :func:`namsg.boost.search_step_size`."""

import math
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..boost import search_step_size
from . import models
from .hparams import GRIDS, TABLE_A1, TUPLE_FIELDS, epsilon_for, grid_tuples, to_mxnet
from .logs import read_log
from .prepare import Prepared
from .resume import check_run
from .runs import run_header
from .train import train_all, train_run


def subset(prepared, size):
    """The first ``size`` training examples (validation unchanged)."""
    if size is None or size >= len(prepared.train_y):
        return prepared
    return Prepared(prepared.train_x[:size], prepared.train_y[:size], prepared.test_x,
                    prepared.test_y, prepared.augment)


def tuple_name(method, values):
    return '_'.join('%s%g' % (f, v) for f, v in zip(TUPLE_FIELDS[method], values))


def _score(loss):
    """Final training loss as a sort key: a diverged run (nan or inf) ranks last."""
    return loss if math.isfinite(loss) else math.inf


def _point_name(setting, method, values):
    """A grid point's path below the log dir (without ``.jsonl``) and the checkpoint dir."""
    return '%s/%s/%s' % (setting, method, tuple_name(method, values))


def _row(values, records):
    """A point's row: its tuple, final training loss and best validation accuracy."""
    return dict(tuple=tuple(values), final_train_loss=records[-1]['train_loss'],
                best_val_acc=max(r['val_acc'] for r in records))


def _points(protocol, method, log_dir, checkpoint_dir):
    """(tuple, optimizer overrides, log path, checkpoint dir) of every point of ``method``'s
    grid, in the grid's order."""
    epsilon = epsilon_for(method, protocol.setting)
    for values in grid_tuples(method):
        name = _point_name(protocol.setting, method, values)
        yield (values, to_mxnet(method, values, epsilon).kwargs,
               Path(log_dir) / (name + '.jsonl'), Path(checkpoint_dir) / name)


def check_grid(protocol, method, prepared, log_dir, checkpoint_dir, contexts=None,
               kvstore='device', command=None, data_source='', data_fingerprint=None):
    """Check every point's existing log and checkpoint as :func:`run_grid` will (each point is
    :func:`~namsg.experiments.resume.check_run` of seed 0), writing nothing: raises
    CheckpointError, naming the file and what to do, for one that is damaged or of another
    configuration. Called for every method before the first-stage search or any training."""
    for values, overrides, log_path, checkpoints in _points(protocol, method, log_dir,
                                                            checkpoint_dir):
        check_run(run_header(protocol, method, 0, prepared, contexts, kvstore, overrides,
                             command, data_source, data_fingerprint), log_path, checkpoints)


def run_grid(protocol, method, prepared, log_dir, checkpoint_dir, contexts=None,
             kvstore='device', echo=None, command=None, data_source='', data_fingerprint=None):
    """Train ``method`` at every point of its grid under ``protocol`` (already budgeted), seed 0;
    returns rows (tuple, final train loss, best val acc) sorted best first (lowest final
    training loss; diverged runs last). Runs are logged and resumed like any other run; a
    point another process is training comes last (see
    :func:`~namsg.experiments.train.train_all`), so two searches of one grid share it out."""
    def train(point, wait):
        values, overrides, log_path, checkpoints = point
        records = train_run(protocol, method, 0, prepared, log_path, checkpoints,
                            contexts=contexts, kvstore=kvstore, overrides=overrides,
                            command=command, data_source=data_source,
                            data_fingerprint=data_fingerprint, wait=wait)
        row = _row(values, records)
        if echo is not None:
            echo('%-40s final train loss %.5f  best val acc %.4f'
                 % (tuple_name(method, values), row['final_train_loss'], row['best_val_acc']))
        return row

    rows = train_all(list(_points(protocol, method, log_dir, checkpoint_dir)), train, echo)
    return _ranked(rows)


def first_stage(protocol, method, prepared, iterations, contexts=None, seed=0):
    """OBSB's first stage for ARSG or ARSGB: :func:`~namsg.boost.search_step_size` over the
    method's B.5 step sizes for ``iterations`` minibatches of the protocol's first epoch (the order
    ``train_run`` uses for ``seed``), with the grid's other values (its mu, or ARSGB's mu0),
    from the network ``train_run`` would start from."""
    if method not in ('ARSG', 'ARSGB'):
        raise ValueError('the step-size search is OBSB\'s first stage, for ARSG and ARSGB '
                         'only, not %r' % (method,))
    contexts = contexts or [mx.cpu()]
    fixed = tuple(GRIDS[method][f][0] for f in TUPLE_FIELDS[method][1:])
    spec = to_mxnet(method, (1.0,) + fixed, epsilon_for(method, protocol.setting))
    params = {k: v for k, v in spec.kwargs.items() if k != 'learning_rate'}
    params['wd'] = protocol.wd
    mx.random.seed(seed)
    net = models.build(protocol.model)
    net.initialize(mx.init.Xavier(), ctx=contexts)
    net(mx.nd.array(prepared.train_x[:1]).as_in_context(contexts[0]))
    rng = np.random.default_rng([seed, 1])
    batches = list(prepared.train_batches(protocol.batch_size, rng))
    return search_step_size(net, batches, gluon.loss.SoftmaxCrossEntropyLoss(), iterations,
                            step_sizes=GRIDS[method]['a'], optimizer=spec.name,
                            optimizer_params=params, ctx=contexts, seed=seed)


def _ranked(rows):
    return sorted(rows, key=lambda r: _score(r['final_train_loss']))


def rows_from_logs(log_dir, setting, method):
    """The rows :func:`run_grid` returned for ``method`` (best first), read back from the
    points' logs under ``log_dir``. Raises ValueError naming the first point whose log is
    missing or unfinished."""
    rows = []
    for values in grid_tuples(method):
        path = Path(log_dir) / (_point_name(setting, method, values) + '.jsonl')
        if not path.is_file():
            raise ValueError('%s: no log of this grid point; run the grid search to the end'
                             % path)
        header, records = read_log(path)
        if len(records) < header['protocol']['epochs']:
            raise ValueError('%s: %d of %d epochs; run the grid search to the end'
                             % (path, len(records), header['protocol']['epochs']))
        rows.append(_row(values, records))
    return _ranked(rows)


def summary_table(setting, results, first_stage=True):
    """Markdown: per method, the grid's winner, Table A1's tuple and its rank, and the number of
    trials; with ``first_stage``, the step size the first stage picks and then its ranking for
    each method that ran it. ``results`` maps method -> (rows best first, StepSizeSearch or
    None)."""
    titles = ['method', 'trials', 'best tuple (final train loss)', 'Table A1',
              'its rank (final train loss)'] + ['first-stage search picks a'] * first_stage
    lines = ['| %s |' % ' | '.join(titles), '|' + '---|' * len(titles)]
    for method, (rows, search) in results.items():
        paper = tuple(TABLE_A1[method][setting])
        ranks = [i for i, r in enumerate(rows) if np.allclose(r['tuple'], paper)]
        rank = ('%d (%.5f)' % (ranks[0] + 1, rows[ranks[0]]['final_train_loss'])
                if ranks else 'not in the grid')
        cells = [method, '%d' % len(rows), '%s (%.5f)' % (tuple_name(method, rows[0]['tuple']),
                                                          rows[0]['final_train_loss']),
                 tuple_name(method, paper), rank]
        if first_stage:
            cells.append('-' if search is None else '%g' % search.best)
        lines.append('| %s |' % ' | '.join(cells))
    for method, (rows, search) in results.items():
        if first_stage and search is not None:
            iterations = len(next(iter(search.losses.values())))
            lines.append('\n%s first stage, %d iterations per step size, scored by the mean '
                         'minibatch loss over its last quarter (best first): %s' % (
                             method, iterations,
                             ', '.join('a = %g: %.5f' % r for r in search.ranking)))
    return '\n'.join(lines) + '\n'
