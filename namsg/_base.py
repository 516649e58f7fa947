"""What the element-wise optimizers of this package share: MXNet's gradient preprocessing,
float32 state for float16 weights, the lazy update of row_sparse gradients and weights, and
update counts that belong to the parameter rather than to the device, saved with its state.

A subclass writes ``_state_slots(weight)`` and ``_step(weight, g, state, lr, t)`` for dense
arrays; this base class turns them into MXNet's ``create_state`` / ``update``.
"""

import warnings
import weakref

import numpy

from mxnet import engine, ndarray as nd
from mxnet.ndarray import NDArray
from mxnet.optimizer import Optimizer

from . import _nonfinite, _ops, kvstore_sync
from ._checks import BASE_CHECKS, check_floating_weight, checked, clip_threshold

# The update counts each optimizer object had when this process first counted with it, per
# parameter: what it was unpickled with (Trainer.load_states, a kvstore server), or nothing for
# a new one. Kept outside the object so that it is never pickled: a count restored here is from
# the file, not from a device of this process.
_RESTORED_COUNTS = weakref.WeakKeyDictionary()


def restored_update_counts(optimizer):
    """{index: count} that ``optimizer`` was restored with (highest over the devices it was
    saved from), recorded on its first use in this process."""
    counts = _RESTORED_COUNTS.get(optimizer)
    if counts is None:
        counts = {}
        for device_counts in optimizer._all_index_update_counts.values():
            for index, count in device_counts.items():
                counts[index] = max(count, counts.get(index, count))
        _RESTORED_COUNTS[optimizer] = counts
    return counts


def continue_update_counts(optimizer, indices):
    """Start the count of each of ``indices`` that is new on the current device from the count
    ``optimizer`` was restored with, instead of MXNet's ``begin_num_update``: the count belongs
    to the parameter, and a checkpoint may be loaded on another device than it was saved on."""
    restored = restored_update_counts(optimizer)
    for idx in indices:
        if idx not in optimizer._index_update_count and idx in restored:
            optimizer._index_update_count[idx] = restored[idx]


class UpdateCount:
    """The update count t of one parameter, the last element of its state tuple.

    MXNet keeps the counts in the optimizer (``_index_update_count``), and
    ``Updater.get_states(dump_optimizer=False)``, which is what ``Module.save_optimizer_states``
    and ``KVStore.save_optimizer_states`` write, saves the states without it: a resumed Module
    restarted t at ``begin_num_update``. Carried in the state, the count is saved and loaded
    with it (``Updater.sync_state_context`` passes it through unchanged, as anything that is
    neither an NDArray nor a tuple). MXNet's counting stays the optimizer's; this is a copy,
    written after each update and read where the state comes from a file.

    ``value``: the count after the state's last update (an int), None before its first.
    Pickled by its qualified name ``namsg._base.UpdateCount``: saved states need it there.
    """

    def __init__(self, value=None):
        self.value = value

    def __repr__(self):
        return 'UpdateCount(%r)' % (self.value,)


def split_count(state):
    """``(slots, count)``: the state tuple without its :class:`UpdateCount`, and that count; count
    is None for a state saved by namsg 0.1.0, which carried none."""
    if isinstance(state, tuple) and state and isinstance(state[-1], UpdateCount):
        return state[:-1], state[-1]
    return state, None


def resume_counts(optimizer, indices, counts):
    """Before ``optimizer`` counts an update of ``indices``: set the count of each whose state
    carries another count (``counts``, from :func:`split_count`; the state was loaded) to that
    one. MXNet's ``_update_count`` then counts on from it, not from ``begin_num_update``."""
    warned = False
    for idx, count in zip(indices, counts):
        if count is None:
            # A state saved without its count: the counts of a restored optimizer
            # (Trainer.save_states) or begin_num_update take over, as they did in namsg 0.1.0.
            if not (warned or idx in optimizer._index_update_count or optimizer.begin_num_update
                    or idx in restored_update_counts(optimizer)):
                warned = True
                warnings.warn(
                    'optimizer states without their update counts (saved by namsg 0.1.0, e.g. '
                    'by Module.save_optimizer_states): %s counts its updates from '
                    'begin_num_update=0 again, which restarts what depends on the step t (bias '
                    'corrections, warm-up, Lookahead\'s k-cycle, lr_scheduler). Pass '
                    'begin_num_update=<number of updates done> with these states.'
                    % type(optimizer).__name__, stacklevel=2)
        elif count.value is not None and optimizer._index_update_count.get(idx) != count.value:
            optimizer._index_update_count[idx] = count.value


def store_counts(optimizer, indices, counts):
    """After ``optimizer`` counted an update of ``indices``: copy each count into its state."""
    for idx, count in zip(indices, counts):
        if count is not None:
            count.value = optimizer._index_update_count[idx]


def all_rows(array):
    """The indices of every row of ``array``, as int64 on its context."""
    return nd.arange(array.shape[0], ctx=array.context, dtype='int64')


def dense_rows(array, rows):
    """The ``rows`` (sorted int64 indices) of a dense or row_sparse ``array``, as a new dense
    array. A row_sparse weight must store every row, as MXNet's own lazy updates require."""
    if array.stype != 'row_sparse':
        return nd.take(array, rows)
    if array.indices.shape[0] != array.shape[0]:
        raise ValueError('a row_sparse weight of shape %s stores %d of its rows: the optimizer '
                         'needs all of them (as MXNet\'s lazy updates do); initialise it densely '
                         '(Trainer and the kvstores do)' % (array.shape, array.indices.shape[0]))
    return nd.sparse.retain(array, rows).data


def write_rows(array, rows, values):
    """``array[rows] = values`` in place, for a dense or row_sparse ``array`` (every row
    stored) and dense ``values`` of its dtype; only those rows are touched."""
    if array.stype != 'row_sparse':
        array[rows] = values
        return
    # NDArray assignment does not reach into a row_sparse array's rows; MXNet's lazy sgd
    # kernel does: with lr = wd = 1 it computes w[r] = 0 * w[r] + values[r], exactly values.
    nd.sparse.sgd_update(array, nd.sparse.row_sparse_array((-values, rows), shape=array.shape,
                                                           ctx=array.context, dtype=array.dtype),
                         lr=1.0, wd=1.0, lazy_update=True, out=array)


class ElementwiseOptimizer(Optimizer):
    """Base class: see the module docstring.

    Parameters (besides :class:`mxnet.optimizer.Optimizer`'s)
    ----------
    lazy_update : bool, default True
        For ``row_sparse`` gradients, update only the rows present in the gradient (weights and
        state), like MXNet's ``adam(lazy_update=True)``; if False the gradient is made dense.
        ``row_sparse`` weights (``gluon.contrib.nn.SparseEmbedding``,
        ``Parameter(stype='row_sparse')``) are updated the same way, with dense state.
    skip_nonfinite_grad : bool, default False
        Leave a parameter (weight, master copy, states, update count) untouched at a step
        whose gradient has a NaN or infinite element, count the skip in
        :attr:`nonfinite_skips` and warn (``RuntimeWarning``) at the first skip of each
        parameter. Without it a non-finite gradient poisons the elements it reaches for good,
        as in MXNet's optimizers. Costs one wait for the gradients per update call. See
        :mod:`namsg._nonfinite`.

    Each hyper-parameter listed in the class's ``CHECKS`` is checked whenever it is assigned,
    in the constructor and after (``opt.beta1 = 1.0`` raises ValueError as ``beta1=1.0`` does).
    ``clip_gradient`` follows MXNet: None, 0 or a negative value means no clipping.
    Weights must be floating point; other dtypes raise ValueError before any state exists.
    """

    #: {attribute: check}, applied to every assignment (see :func:`namsg._checks.checked`).
    CHECKS = BASE_CHECKS

    #: Default for optimizers pickled before the option existed.
    skip_nonfinite_grad = False

    def __init__(self, learning_rate=0.001, lazy_update=True, skip_nonfinite_grad=False,
                 **kwargs):
        # learning_rate reaches the check as MXNet's Optimizer assigns it (self.lr): None
        # without an lr_scheduler has become MXNet's default 0.01 there.
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.lazy_update = lazy_update
        self.skip_nonfinite_grad = skip_nonfinite_grad
        # Updater hands up to this many parameters of one device and dtype to one
        # update_multi_precision call: the bookkeeping, and skip_nonfinite_grad's check and
        # wait, happen once per call rather than per parameter.
        self.aggregate_num = 128

    # -- parameter servers (see namsg.kvstore_sync) -----------------------------------------
    def __setattr__(self, name, value):
        # Checked as in the constructor, before anything changes; changes of the settings
        # (kvstore_sync.server_settings) also reach the servers this optimizer runs on.
        kvstore_sync.set_setting(self, name, checked(self, name, value), super().__setattr__)

    def __getstate__(self):
        # MXNet drops param_dict, and with it Gluon's lr_mult / wd_mult: carry them.
        return kvstore_sync.pickled_state(self, super().__getstate__())

    # -- what subclasses write -------------------------------------------------------------
    def _state_slots(self, weight, zeros):
        """The state arrays for ``weight``, a tuple (``create_state`` appends the update
        count); ``zeros()`` makes one zero array of the state dtype on the weight's context."""
        raise NotImplementedError

    def _step(self, weight, g, state, lr, t, arith, tmp):
        """Update dense ``weight`` and ``state`` in place from the preprocessed gradient ``g``
        (scratch the step may overwrite), at this parameter's step ``t``; ``arith``
        (:class:`namsg._ops.Arith`) computes for the weight's dtype and device, ``tmp`` is one
        more scratch array of the weight's shape and dtype."""
        raise NotImplementedError

    def _check_layout(self, state):
        """Raise ValueError for a state (without its count) that this optimizer cannot read;
        called for every parameter of an update before anything changes."""

    # -- MXNet's interface -----------------------------------------------------------------
    def create_state(self, index, weight):
        check_floating_weight(weight.dtype, type(self).__name__)
        # float16 cannot hold the small constants these methods use (epsilon = 1e-8 underflows
        # to 0): keep the state in float32 and compute in float32 (see update). State is dense
        # for row_sparse weights too: it is read and written by rows.
        dtype = numpy.float32 if weight.dtype == numpy.float16 else weight.dtype
        return self._state_slots(weight, lambda: nd.zeros(weight.shape, weight.context,
                                                          dtype=dtype)) + (UpdateCount(),)

    def create_state_multi_precision(self, index, weight):
        # MXNet's version warns that float16 weights without multi_precision accumulate in
        # float16; here the state is float32 whatever the weight (create_state), so it would
        # mislead.
        if weight.dtype == numpy.float16 and not self.multi_precision:
            return self.create_state(index, weight)
        return super().create_state_multi_precision(index, weight)

    @property
    def param_dict(self):
        """{index: gluon.Parameter}, set by gluon.Trainer (MXNet's attribute, not pickled)."""
        return self.__dict__.get('param_dict', {})

    @param_dict.setter
    def param_dict(self, params):
        # Trainer hands its Parameters over before any update: refuse integer ones here, where
        # the error reaches the caller. An update on a kvstore runs in a callback whose
        # exceptions MXNet only prints, so create_state's check would go unseen there.
        for param in (params or {}).values():
            if param.grad_req != 'null':
                check_floating_weight(param.dtype, type(self).__name__,
                                      'Parameter %r' % param.name)
        self.__dict__['param_dict'] = params if params else {}

    def _update_count(self, index):
        # MXNet counts per device, so a parameter restored on a device it was not saved from
        # would restart at begin_num_update.
        continue_update_counts(self, index if isinstance(index, (list, tuple)) else [index])
        super()._update_count(index)

    def _count_with_states(self, indices, counts):
        """MXNet's ``_update_count(indices)``, continuing from the counts the states carry
        (``counts``: their :class:`UpdateCount` or None) and copying the new ones into them."""
        resume_counts(self, indices, counts)
        self._update_count(indices)
        store_counts(self, indices, counts)

    def update(self, index, weight, grad, state):
        """MXNet's ``Optimizer.update``: one parameter (or lists of them), ``state`` as
        ``create_state`` made it (no multi-precision master copy)."""
        self._update_all(*_as_lists(index, weight, grad, state), masters=None)

    def update_multi_precision(self, index, weight, grad, state):
        """MXNet's entry point (Updater, kvstores): one parameter, or lists of parameters of one
        device when the optimizer aggregates (``aggregate_num``). With ``multi_precision`` a
        float16 weight's state is ``(float32 master copy, state)``, as MXNet makes it."""
        indices, weights, grads, states = _as_lists(index, weight, grad, state)
        masters = None
        if self.multi_precision:
            masters = [None] * len(weights)
            for j, w in enumerate(weights):
                if w.dtype == numpy.float16:
                    masters[j], states[j] = states[j]
        self._update_all(indices, weights, grads, states, masters)

    def _update_all(self, indices, weights, grads, states, masters):
        assert all(isinstance(a, NDArray) for a in weights + grads)
        if self.skip_nonfinite_grad:
            kept = _nonfinite.keep_finite(self, indices, weights, grads)
            if len(kept) < len(indices):
                indices, weights, grads, states = ([a[j] for j in kept] for a in
                                                   (indices, weights, grads, states))
                masters = None if masters is None else [masters[j] for j in kept]
                if not indices:
                    return
        states, counts = zip(*(split_count(s) for s in states))
        for state in states:
            self._check_layout(state)
        self._count_with_states(indices, counts)
        self._apply(indices, weights, grads, states, masters, self._get_lrs(indices),
                    self._get_wds(indices))

    def _apply(self, indices, weights, grads, states, masters, lrs, wds):
        """Update each parameter (counted already) at learning rate ``lrs[j]``, weight decay
        ``wds[j]``, with its master copy ``masters[j]`` (``masters`` may be None): the NDArray
        path, one parameter after the other."""
        with engine.bulk(_BULK):
            self._apply_each(indices, weights, grads, states, masters, lrs, wds)

    def _apply_each(self, indices, weights, grads, states, masters, lrs, wds):
        for j, index in enumerate(indices):
            t = self._index_update_count[index]
            master = masters[j] if masters is not None else None
            if master is None:
                self._update_param(weights[j], grads[j], states[j], lrs[j], wds[j], t)
            else:
                # The master copy takes the update (its float16 gradient is cast on the way
                # into the step's scratch), then the float16 weight is the master rounded once.
                self._update_param(master, grads[j], states[j], lrs[j], wds[j], t)
                nd.cast(master, dtype=weights[j].dtype, out=weights[j])

    def _update_param(self, weight, grad, state, lr, wd, t):
        if grad.stype == 'row_sparse' and self.lazy_update:
            rows, grad = grad.indices, grad.data
        else:
            if grad.stype != 'default':
                grad = grad.tostype('default')
            if weight.stype != 'row_sparse':
                self._update_dense(weight, grad, state, lr, wd, t)
                return
            rows = all_rows(weight)
        if rows.shape[0] == 0:
            return
        weight_rows = dense_rows(weight, rows)
        state_rows = tuple(nd.take(s, rows) for s in state)
        self._update_dense(weight_rows, grad, state_rows, lr, wd, t)
        write_rows(weight, rows, weight_rows)
        for s, s_rows in zip(state, state_rows):
            s[rows] = s_rows

    def _update_dense(self, weight, grad, state, lr, wd, t):
        dtype = weight.dtype
        # float16 weights (without multi_precision) are computed in float32 against their
        # float32 state, in scratch arrays; so is a float16 gradient.
        compute = numpy.float32 if dtype == numpy.float16 else dtype
        arith = _ops.arith(compute, weight.context.device_type)
        if dtype == numpy.float16:
            w, g, tmp = _ops.scratch(self, weight, compute, 3)
            nd.cast(weight, dtype=compute, out=w)
        else:
            (g, tmp), w = _ops.scratch(self, weight, compute, 2), weight
        if grad.dtype != compute:
            nd.cast(grad, dtype=compute, out=g)
            grad = g
        self._preprocess(grad, w, wd, g, tmp, arith)
        self._step(w, g, state, lr, t, arith, tmp)
        if w is not weight:
            nd.cast(w, dtype=dtype, out=weight)

    def _preprocess(self, grad, weight, wd, out, tmp, arith):
        """out = clip(rescale_grad * grad + wd * weight, clip_gradient), as MXNet's adam does
        and the reference reads. The weight term stays for wd = 0: a weight that is not finite
        then makes the gradient NaN (as the fused kernel and the reference compute), instead of
        leaving its states finite on one path and not on the other. ``grad`` may be ``out``."""
        arith.axpby(out, self.rescale_grad, grad, wd, weight, tmp)
        clip = clip_threshold(self.clip_gradient)
        if clip is not None:
            nd.clip(out, -clip, clip, out=out)

    #: See :mod:`namsg._nonfinite`.
    nonfinite_skips = _nonfinite.NONFINITE_SKIPS


# The NDArray path's operators go to MXNet's engine in bulks of this many (mxnet.engine.bulk):
# on small arrays their dispatch costs more than their arithmetic, and bulking saved about 5%
# of the CPU time of a step over ResNet-20's parameters (MXNet 1.9.1).
_BULK = 64


def _as_lists(index, weight, grad, state):
    """MXNet hands over one parameter or lists (tuples) of them: lists, always."""
    if isinstance(index, (list, tuple)):
        return list(index), list(weight), list(grad), list(state)
    return [index], [weight], [grad], [state]
