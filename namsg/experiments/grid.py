"""B.5's grid search, on a budget: every tuple of a method's grid, trained for a few epochs
(optionally on a subset), ranked by final training loss."""

from pathlib import Path

from .hparams import TUPLE_FIELDS, epsilon_for, grid_tuples, to_mxnet
from .train import Prepared, train_run


def subset(prepared, size):
    """The first ``size`` training examples (validation unchanged)."""
    if size is None or size >= len(prepared.train_y):
        return prepared
    return Prepared(prepared.train_x[:size], prepared.train_y[:size], prepared.test_x,
                    prepared.test_y, prepared.augment)


def tuple_name(method, values):
    return '_'.join('%s%g' % (f, v) for f, v in zip(TUPLE_FIELDS[method], values))


def run_grid(protocol, method, prepared, log_dir, checkpoint_dir, contexts=None,
             kvstore='device', echo=None, command=None, data_source=''):
    """Train ``method`` at every point of its grid under ``protocol`` (already budgeted);
    returns rows (tuple, final train loss, best val acc) sorted best first."""
    rows = []
    epsilon = epsilon_for(method, protocol.setting)
    for values in grid_tuples(method):
        name = '%s/%s/%s' % (protocol.setting, method, tuple_name(method, values))
        overrides = to_mxnet(method, values, epsilon).kwargs
        records = train_run(protocol, method, 0, prepared, Path(log_dir) / (name + '.jsonl'),
                            Path(checkpoint_dir) / name, contexts=contexts, kvstore=kvstore,
                            overrides=overrides, command=command, data_source=data_source)
        row = dict(tuple=values, final_train_loss=records[-1]['train_loss'],
                   best_val_acc=max(r['val_acc'] for r in records))
        if echo is not None:
            echo('%-40s final train loss %.5f  best val acc %.4f'
                 % (tuple_name(method, values), row['final_train_loss'], row['best_val_acc']))
        rows.append(row)
    return sorted(rows, key=lambda r: r['final_train_loss'])
