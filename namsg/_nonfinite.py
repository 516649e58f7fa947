"""``skip_nonfinite_grad``: leave a parameter alone for a step whose gradient is not finite, and
count and report it.

By default the optimizers of this package do what the update's equations do with a NaN or an
infinity, elementwise and the same on the fused and the NDArray path (see
:class:`namsg.ARSG`): a NaN gradient element turns that element's weight and every state slot
into NaN; an infinite one makes the weight NaN and the second moments infinite; a weight that is
not finite makes its gradient, and so every state, NaN at the next step (the weight decay term
``wd * w`` is part of the gradient even for wd = 0). Either way the element stays poisoned for
good, as with MXNet's own optimizers.

With ``skip_nonfinite_grad=True`` a parameter whose gradient (as handed to the optimizer,
before ``rescale_grad``, weight decay and clipping) has any NaN or infinite element is not
updated at that step: its weight, master copy, states and update count stay as they were, so
its next update continues as if the step had not happened (the learning-rate schedule follows
the other parameters' counts, as always). Each skip is counted per parameter
(``optimizer.nonfinite_skips``) and the first skip of each parameter in a process is reported
with a ``RuntimeWarning``. Deciding needs the gradients' finiteness on the host: one
``multi_all_finite`` operator and one wait for it per update call (as MXNet's AMP loss scaler
does at every step), before the update is handed to the engine.
"""

import warnings
import weakref

from mxnet import ndarray as nd

# Indices already warned about, per optimizer, in this process (not saved with it: a resumed
# run warns again at the first skip of each parameter).
_WARNED = weakref.WeakKeyDictionary()


def finite_gradients(grads):
    """[bool]: whether each of ``grads`` (dense or row_sparse NDArrays) has only finite
    values. Waits for them: one operator and one wait when all are finite, one more operator
    per gradient otherwise."""
    values = [g.data if g.stype == 'row_sparse' else g for g in grads]
    if len(values) > 1 and len({v.dtype for v in values}) == 1:
        if nd.multi_all_finite(*values, num_arrays=len(values)).asscalar():
            return [True] * len(values)
    flags = [nd.all_finite(v) for v in values]
    flags = flags[0] if len(flags) == 1 else nd.concat(*flags, dim=0)
    return [bool(f) for f in flags.asnumpy()]


def drop_nonfinite(optimizer, indices, weights, grads, *more):
    """``(kept, [indices, weights, grads, *more])``: the positions in ``indices`` whose
    gradients are finite, and the lists cut to them (an argument that is None stays None).
    Each parameter left out is counted as skipped for ``optimizer`` (on its weight's device)
    and reported once."""
    flags = finite_gradients(grads)
    for index, weight, finite in zip(indices, weights, flags):
        if not finite:
            _record(optimizer, index, weight.context)
    kept = [j for j, finite in enumerate(flags) if finite]
    lists = (indices, weights, grads) + more
    if len(kept) < len(indices):
        lists = tuple(None if a is None else [a[j] for j in kept] for a in lists)
    return kept, list(lists)


def _record(optimizer, index, context):
    # Counted per device, like MXNet's update counts: with several devices and no kvstore
    # update, each device's updater sees the same summed gradient and skips it once.
    devices = optimizer.__dict__.setdefault('_nonfinite_skips', {})
    counts = devices.setdefault((context.device_typeid, context.device_id), {})
    counts[index] = counts.get(index, 0) + 1
    warned = _WARNED.setdefault(optimizer, set())
    if index in warned:
        return
    warned.add(index)
    name = parameter_name(optimizer, index)
    warnings.warn(
        'namsg: %s skipped the update of parameter %s: its gradient has a NaN or infinite '
        'element. Its weight, states and update count (%s) are left as they were '
        '(skip_nonfinite_grad=True); later skips of this parameter are only counted, in '
        'optimizer.nonfinite_skips.'
        % (type(optimizer).__name__,
           '%r (index %r)' % (name, index) if name is not None else 'of index %r' % (index,),
           # Lookahead forwards these to its inner optimizer, which counts.
           optimizer._index_update_count.get(index, optimizer.begin_num_update)),
        RuntimeWarning, stacklevel=4)


def parameter_name(optimizer, index):
    """The name Gluon (``param_dict``) or Module (``idx2name``) gives parameter ``index``, or
    None."""
    param = getattr(optimizer, 'param_dict', {}).get(index)
    if param is not None:
        return param.name
    return getattr(optimizer, 'idx2name', {}).get(index)


def skip_counts(optimizer):
    """{parameter name, or index where no name is known: updates skipped}; a parameter updated
    on several devices counts the most any one of them skipped."""
    merged = {}
    for counts in optimizer.__dict__.get('_nonfinite_skips', {}).values():
        for index, count in counts.items():
            name = parameter_name(optimizer, index)
            key = index if name is None else name
            merged[key] = max(count, merged.get(key, 0))
    return merged


#: The ``nonfinite_skips`` attribute of every optimizer of the package.
NONFINITE_SKIPS = property(skip_counts, doc="""\
{parameter name (Gluon's Parameter.name or Module's idx2name), or index where no name is known:
number of updates skipped because the gradient had a NaN or infinite element}
(``skip_nonfinite_grad=True``; empty otherwise). Saved with the optimizer (Trainer.save_states).
With updates on a ``dist_*`` kvstore the servers run the optimizer and count; the worker's copy
stays empty.""")

