"""What the element-wise optimizers of this package share: MXNet's gradient preprocessing,
float32 state for float16 weights, the lazy update of row_sparse gradients and weights, update
counts that belong to the parameter rather than to the device, saved with its state, and the
checks of loaded states (:mod:`namsg._states`), the step size an lr_scheduler gives, a repr.

A subclass writes ``_state_slots`` and ``_step`` (the update of one dense array) for dense
arrays; this base class turns them into MXNet's ``create_state`` / ``update``.
"""

import inspect
import warnings

import numpy

from mxnet import engine, ndarray as nd
from mxnet.lr_scheduler import LRScheduler
from mxnet.ndarray import NDArray
from mxnet.ndarray.sparse import BaseSparseNDArray
from mxnet.optimizer import Optimizer

from . import _nonfinite, _ops, kvstore_sync
from ._checks import (BASE_CHECKS, aggregation_size, check_floating_weight,
                      check_learning_rate, checked, clip_threshold)
# What the optimizers import from here; UpdateCount must stay importable here, the name under
# which states saved before the count became an NDArray pickled it.
from ._states import (UpdateCount, adopt_states, check_trainer_states,  # noqa: F401
                      continue_update_counts, count_runs, new_trailer, remember, remembered,
                      restored_update_counts, resume_counts, same_objects, split_count,
                      store_counts, write_count_runs)


class DefaultStepSize(float):
    """An optimizer class's default ``learning_rate``: the number (which ``help()`` shows), and
    the sign that the caller gave none, so that an ``lr_scheduler``'s ``base_lr`` sets the step
    size (MXNet's Optimizer would overwrite it with the class default)."""

    __slots__ = ()

    def __repr__(self):
        return repr(float(self))


#: What MXNet 1.6 and later's Optimizer makes of learning_rate=None without an lr_scheduler.
MXNET_DEFAULT_LR = 0.01


def step_size(learning_rate, lr_scheduler, optimizer):
    """The ``learning_rate`` to hand MXNet's Optimizer: the scheduler's ``base_lr`` when only
    ``lr_scheduler`` set it (``learning_rate`` left out or None); with both, ``learning_rate``,
    as in MXNet, which overwrites the scheduler's ``base_lr`` (warned here when they differ;
    MXNet only prints); None alone is MXNet's 0.01, with a warning where the default
    ``learning_rate`` of ``optimizer`` (the class being built) differs (MXNet says nothing).
    The number is handed on, not None, because MXNet 1.5's Optimizer assigns ``learning_rate``
    to the scheduler's ``base_lr`` and to ``lr`` as it comes (1.6 and later skip None). Raises
    ValueError for a ``learning_rate`` that is not a step size, before the scheduler is
    changed."""
    if isinstance(learning_rate, DefaultStepSize) or learning_rate is None:
        if lr_scheduler is None:
            if learning_rate is None:
                # Read here, not at every construction: only this branch needs it.
                given = inspect.signature(optimizer.__init__).parameters.get('learning_rate')
                default = None if given is None or given.default is given.empty else given.default
                if default is not None and float(default) != MXNET_DEFAULT_LR:
                    # A None from a configuration file most likely meant "the default".
                    warnings.warn('%s got learning_rate=None and no lr_scheduler: the step '
                                  'size is %g, what MXNet\'s Optimizer makes of None, not %s\'s '
                                  'own default %g; leave learning_rate out for that, or give a '
                                  'number.' % (optimizer.__name__, MXNET_DEFAULT_LR,
                                               optimizer.__name__, default),
                                  stacklevel=4)
                return MXNET_DEFAULT_LR
            return float(learning_rate)
        # A scheduler of one's own may have no base_lr: None, which 1.6 and later accept.
        return getattr(lr_scheduler, 'base_lr', None)
    if lr_scheduler is None:
        return learning_rate
    check_learning_rate(learning_rate, True)
    base_lr = getattr(lr_scheduler, 'base_lr', learning_rate)
    if base_lr != learning_rate:
        warnings.warn('%s got learning_rate=%r and an lr_scheduler with base_lr=%r: '
                      'learning_rate wins, as in MXNet (the scheduler now starts from %r). To '
                      'take the scheduler\'s step size, leave learning_rate out.'
                      % (optimizer.__name__, learning_rate, base_lr, learning_rate),
                      stacklevel=4)
        lr_scheduler.base_lr = learning_rate
    return learning_rate


#: MXNet Optimizer settings that a repr shows when they are not at these defaults.
_SHOWN_IF_SET = (('rescale_grad', 1.0), ('clip_gradient', None), ('lr_scheduler', None),
                 ('multi_precision', False), ('begin_num_update', 0), ('lazy_update', True))


def _shown(value):
    # MXNet's schedulers print as <... object at 0x...>; their base_lr is what matters here.
    if isinstance(value, LRScheduler):
        return '%s(base_lr=%r)' % (type(value).__name__, value.base_lr)
    return repr(value)


def _constructor_arguments(cls):
    """(name, default) of the arguments of ``cls``'s constructor and of those it hands on to its
    base classes' (up to MXNet's Optimizer), but for the ones a class refuses (``NOT_TAKEN``)."""
    seen, refused = {}, set()
    for klass in cls.__mro__:
        if klass is Optimizer or klass is object:
            break
        refused.update(vars(klass).get('NOT_TAKEN', ()))
        if '__init__' in vars(klass):
            for name, parameter in inspect.signature(klass.__init__).parameters.items():
                if parameter.default is not inspect.Parameter.empty and name not in refused:
                    seen.setdefault(name, parameter.default)
    return seen.items()


def repr_fields(optimizer):
    """[(name, text)] of what ``optimizer``'s repr shows: the step size; the arguments of its
    class's constructor (those whose default is None or a bool only when set); ``wd``; and
    MXNet's settings (:data:`_SHOWN_IF_SET`) that differ from their defaults. Works for MXNet's
    own optimizers too (Lookahead's inner one), from the arguments they store by name."""
    fields = [('learning_rate', repr(optimizer.learning_rate))]
    for name, default in _constructor_arguments(type(optimizer)):
        if name == 'learning_rate' or not hasattr(optimizer, name):
            continue
        value = getattr(optimizer, name)
        if (default is None or isinstance(default, bool)) and value == default:
            continue
        fields.append((name, _shown(value)))
    fields.append(('wd', repr(optimizer.wd)))
    shown = {name for name, _ in fields}
    for name, default in _SHOWN_IF_SET:
        value = getattr(optimizer, name, default)
        if name not in shown and not (value is default or value == default):
            fields.append((name, _shown(value)))
    return fields


def describe(optimizer, fields=None):
    """``Name(a=1, b='x')`` from ``fields`` [(name, text)], by default :func:`repr_fields`."""
    if fields is None:
        fields = repr_fields(optimizer)
    return '%s(%s)' % (type(optimizer).__name__, ', '.join('%s=%s' % f for f in fields))


def as_lists(index, weight, grad, state):
    """What MXNet's Updater hands ``update_multi_precision``, one parameter or sequences of
    them (when the optimizer aggregates), as four lists."""
    if not isinstance(index, (list, tuple)):
        return [index], [weight], [grad], [state]
    return list(index), list(weight), list(grad), list(state)


def split_masters(optimizer, weights, states, indices=None):
    """The float32 master copies that MXNet's ``multi_precision`` puts in front of the states
    of float16 weights (``(master, state)``), one per weight (None for a weight without one),
    or None when no weight has one; ``states`` (a list) then holds the states they wrapped.
    With ``indices`` (the parameters' indices), the answer for the same weight and state
    objects is kept for the next call (each weight's dtype is a call into MXNet)."""
    if not optimizer.multi_precision:
        return None
    key = ('masters', tuple(indices)) if indices is not None else None
    seen = remembered(optimizer, key) if key is not None else None
    if seen is not None and same_objects(weights, seen[0]) and same_objects(states, seen[1]):
        states[:] = seen[3]
        return seen[2]
    given = list(states)
    masters = [None] * len(weights)
    for j, weight in enumerate(weights):
        if weight.dtype == numpy.float16:
            masters[j], states[j] = states[j]
    # None rather than all None: ARSG's fused operator then takes float32 weights, as without
    # multi_precision.
    masters = masters if any(master is not None for master in masters) else None
    if key is not None:
        remember(optimizer, key, (list(weights), given, masters, list(states)))
    return masters


class _Plan:
    """What an update call over a list of parameters found out about their state objects
    (``states``, as the Updater holds them without the master copies): the states split from
    their counts (``slots``, ``counts``) and their layout checked against ``layout`` (what
    :meth:`ElementwiseOptimizer._check_layout` reads besides the state); ``resumed``: the counts
    were all NDArray pairs and :func:`resume_counts` has taken them in (nothing is left for it
    to do with them); ``runs``: where the counts are in the optimizer's count buffers
    (:func:`namsg._states.count_runs`), or None; and, for the weight and gradient objects
    ``arrays`` (checked to be NDArrays), whether they are all dense on a CPU (``dense_cpu``,
    None until asked). Valid for the very same objects only (see namsg._states)."""

    __slots__ = ('states', 'layout', 'slots', 'counts', 'resumed', 'runs', 'arrays',
                 'dense_cpu')

    def __init__(self, states, layout, slots, counts):
        self.states, self.layout, self.slots, self.counts = states, layout, slots, counts
        self.resumed, self.runs, self.arrays, self.dense_cpu = False, None, None, None

    def take_arrays(self, weights, grads):
        """Make ``weights`` and ``grads`` the arrays of this plan (unless they are already)."""
        arrays = weights + grads
        if self.arrays is None or not same_objects(arrays, self.arrays):
            assert all(isinstance(a, NDArray) for a in arrays)
            self.arrays, self.dense_cpu = arrays, None

    def is_dense_cpu(self):
        """Whether the plan's weights and gradients are all dense NDArrays on a CPU context
        (the arrays the fused operator takes)."""
        if self.dense_cpu is None:
            weights = self.arrays[:len(self.arrays) // 2]
            # Each NDArray property is a call into MXNet: isinstance tells the storage type.
            self.dense_cpu = weights[0].context.device_type == 'cpu' and not any(
                isinstance(a, BaseSparseNDArray) for a in self.arrays)
        return self.dense_cpu


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

    Each hyper-parameter listed in the class's ``_CHECKS`` is checked whenever it is assigned,
    in the constructor and after (``opt.beta1 = 1.0`` raises ValueError as ``beta1=1.0`` does).
    ``clip_gradient`` follows MXNet: None, 0 or a negative value means no clipping.
    Weights must be floating point; other dtypes raise ValueError before any state exists.

    ``learning_rate`` left out with an ``lr_scheduler`` given: the scheduler's ``base_lr`` is the
    step size (MXNet's Optimizer would set it to the class default); both given: see
    :func:`step_size`. States end in the parameter's update count and name, and loaded states
    are checked against their parameters: see :mod:`namsg._states`.

    What an update call finds out about its state, weight and gradient objects (states split
    from their counts, layouts and loaded states checked, master copies, where the counts are)
    is kept for the next call over the same objects (:class:`_Plan`, :func:`split_masters`,
    :func:`namsg._states.adopt_states`); step sizes, weight decays and hyper-parameters are
    read at every call.
    """

    #: {attribute: check}, applied to every assignment (see :func:`namsg._checks.checked`).
    _CHECKS = BASE_CHECKS
    #: The length of a state saved without its count where the state's last element cannot
    #: tell (see namsg._states.split_count): not needed here, unlike for Lookahead.
    #:
    #: :meta private:
    STATE_LENGTH = None

    #: Default for optimizers pickled before the option existed (the constructor's argument is
    #: the documented one).
    #:
    #: :meta private:
    skip_nonfinite_grad = False

    def __init__(self, learning_rate=DefaultStepSize(0.001), lazy_update=True,
                 skip_nonfinite_grad=False, **kwargs):
        # Read first: a bad value fails here, before anything is set up.
        aggregate_num = aggregation_size()
        # learning_rate reaches the check as MXNet's Optimizer assigns it (self.lr): None
        # without an lr_scheduler has become MXNet's default 0.01 there.
        super().__init__(learning_rate=step_size(learning_rate, kwargs.get('lr_scheduler'),
                                                 type(self)), **kwargs)
        self.lazy_update = lazy_update
        self.skip_nonfinite_grad = skip_nonfinite_grad
        # The Updater hands up to this many parameters of one device and dtype to one
        # update_multi_precision call: their loaded states are checked before any of them is
        # updated, and the bookkeeping (skip_nonfinite_grad's check and wait, the counts and
        # their one write into the states) happens once per call rather than per parameter;
        # ARSG's fused operator updates them in one pass.
        self.aggregate_num = aggregate_num

    def __repr__(self):
        return describe(self)

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
                                                          dtype=dtype)) + \
            (new_trailer(self, index, weight),)

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
        # Trainer.load_states ends here: the states it loaded are checked while the error
        # still reaches the caller.
        check_trainer_states(self, params)

    def _update_count(self, index):
        # MXNet counts per device, so a parameter restored on a device it was not saved from
        # would restart at begin_num_update.
        continue_update_counts(self, index if isinstance(index, (list, tuple)) else [index])
        super()._update_count(index)

    def update(self, index, weight, grad, state):
        """MXNet's ``Optimizer.update``: one parameter (or lists of them), ``state`` as
        ``create_state`` made it (no multi-precision master copy). Only the count and name of a
        loaded state are taken here (:func:`namsg._states.resume_counts`): the checks against
        the parameters run in :meth:`update_multi_precision`, which the Updater calls."""
        self._update_all(*as_lists(index, weight, grad, state), masters=None)

    def update_multi_precision(self, index, weight, grad, state):
        """MXNet's entry point (Updater, kvstores): one parameter, or lists of parameters of one
        device and dtype when the optimizer aggregates (``aggregate_num``). With
        ``multi_precision`` a float16 weight's state is ``(float32 master copy, state)``, as
        MXNet makes it.

        Raises ValueError, before any parameter of the call changes, for loaded states that do
        not fit their parameters (:func:`namsg._states.adopt_states`) and for states of another
        layout (``_check_layout``)."""
        indices, weights, grads, states = as_lists(index, weight, grad, state)
        # Before anything else, on the states as the Updater holds them (adopt_states takes the
        # master copies apart itself): a state loaded onto the wrong parameter is refused even
        # at a step that skip_nonfinite_grad skips, and a loaded state's count is the one
        # skip_nonfinite_grad's warning reports.
        adopt_states(self, indices, weights, states)
        self._update_all(indices, weights, grads, states,
                         split_masters(self, weights, states, indices))

    def _update_all(self, indices, weights, grads, states, masters, outer_counts=None):
        """Update the parameters of one call: those with a non-finite gradient left out
        (``skip_nonfinite_grad``: their weights, states and counts untouched), every state's
        layout checked, all counted at once and their counts written into the states with one
        operation, then :meth:`_apply`. ``outer_counts``: the counts (as :func:`split_count`
        gives them) of a wrapper's states of the same parameters (Lookahead's), written in that
        same operation for the parameters updated. Returns the positions in ``indices`` of the
        parameters updated."""
        kept = range(len(indices))
        if self.skip_nonfinite_grad:
            kept, (indices, weights, grads, states, masters, outer_counts) = \
                _nonfinite.drop_nonfinite(self, indices, weights, grads, states, masters,
                                          outer_counts)
            if not indices:
                return kept
        plan = self._plan(indices, weights, grads, states)
        self._count_with_states(indices, plan.counts, outer_counts, plan)
        self._apply(indices, weights, grads, plan.slots, masters, self._get_lrs(indices),
                    self._get_wds(indices), plan)
        return kept

    def _layout(self):
        """What :meth:`_check_layout`'s verdict depends on besides the state (None here): a
        state that passed is not checked again while this stays the same."""
        return None

    def _plan(self, indices, weights, grads, states):
        """The :class:`_Plan` of this call: the one of the last call over ``indices`` if it was
        made for these very state objects and layout, else a new one (states split from their
        counts, every layout checked: ValueError before anything changes)."""
        key = ('plan', tuple(indices))
        plan = remembered(self, key)
        layout = self._layout()
        if plan is None or plan.layout != layout or not same_objects(states, plan.states):
            slots, counts = zip(*(split_count(s) for s in states))
            for state in slots:
                self._check_layout(state)
            plan = remember(self, key, _Plan(list(states), layout, slots, counts))
        plan.take_arrays(weights, grads)
        return plan

    def _count_with_states(self, indices, counts, outer_counts=None, plan=None):
        """MXNet's ``_update_count(indices)``, continuing from the counts the states carry
        (``counts`` from :func:`split_count`), then the new counts written into them and into
        ``outer_counts`` (see :meth:`_update_all`): one MXNet operation for the whole call,
        whatever the number of parameters (see :mod:`namsg._states`). ``plan``: the call's
        :class:`_Plan`, whose ``counts`` these are."""
        if plan is None or not plan.resumed:
            resume_counts(self, indices, counts)
            if plan is not None and all(type(c) is tuple for c in counts):
                plan.resumed = True
                plan.runs = count_runs(self, counts)
        self._update_count(indices)
        if outer_counts is not None:
            indices, counts = list(indices) * 2, list(counts) + list(outer_counts)
        elif plan is not None and plan.runs is not None:
            # The counts this optimizer made, in its buffers: when they all have one value
            # (parameters updated together from the start) their runs are written as
            # store_counts would write them.
            counter = self._index_update_count
            values = [counter[index] for index in indices]
            if values.count(values[0]) == len(values):
                write_count_runs(plan.runs, values[0])
                return
        store_counts(self, indices, counts)

    def _apply(self, indices, weights, grads, states, masters, lrs, wds, plan=None):
        """Update each parameter (counted already) at learning rate ``lrs[j]``, weight decay
        ``wds[j]``, with its master copy ``masters[j]`` (``masters`` may be None): the NDArray
        path, one parameter after the other. ``plan``: the call's :class:`_Plan`, or None."""
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

    # The property documents itself (namsg._nonfinite).
    nonfinite_skips = _nonfinite.NONFINITE_SKIPS


# The NDArray path's operators go to MXNet's engine in bulks of this many (mxnet.engine.bulk):
# on small arrays their dispatch costs more than their arithmetic, and bulking saved about 5%
# of the CPU time of a step over ResNet-20's parameters (MXNet 1.9.1).
_BULK = 64

