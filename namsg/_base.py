"""What the element-wise optimizers of this package share: MXNet's gradient preprocessing,
float32 state for float16 weights, the lazy update of row_sparse gradients and weights, update
counts that belong to the parameter rather than to the device, saved with its state, and the
checks of loaded states (:mod:`namsg._states`), the step size an lr_scheduler gives, a repr.

A subclass writes ``_state_slots(weight)`` and ``_step(weight, g, state, lr, t)`` for dense
arrays; this base class turns them into MXNet's ``create_state`` / ``update``.
"""

import inspect
import warnings

import numpy

from mxnet import ndarray as nd
from mxnet.lr_scheduler import LRScheduler
from mxnet.ndarray import NDArray
from mxnet.optimizer import Optimizer

from . import kvstore_sync
from ._checks import (BASE_CHECKS, aggregation_size, check_floating_weight,
                      check_learning_rate, checked, clip_threshold)
# What the optimizers import from here; UpdateCount must stay importable here, the name under
# which states saved before the count became an NDArray pickled it.
from ._states import (UpdateCount, adopt_states, check_trainer_states,  # noqa: F401
                      continue_update_counts, new_trailer, restored_update_counts, resume_counts,
                      split_count, store_counts)


class DefaultStepSize(float):
    """An optimizer class's default ``learning_rate``: the number (which ``help()`` shows), and
    the sign that the caller gave none, so that an ``lr_scheduler``'s ``base_lr`` sets the step
    size (MXNet's Optimizer would overwrite it with the class default)."""

    __slots__ = ()

    def __repr__(self):
        return repr(float(self))


def step_size(learning_rate, lr_scheduler, optimizer):
    """The ``learning_rate`` to hand MXNet's Optimizer: None (the scheduler's ``base_lr``) when
    only ``lr_scheduler`` set it; with both, ``learning_rate``, as in MXNet, which overwrites the
    scheduler's ``base_lr`` (warned here when they differ; MXNet only prints). Raises ValueError
    for a ``learning_rate`` that is not a step size, before the scheduler is changed."""
    if isinstance(learning_rate, DefaultStepSize):
        return None if lr_scheduler is not None else float(learning_rate)
    if lr_scheduler is None or learning_rate is None:
        return learning_rate
    check_learning_rate(learning_rate, True)
    base_lr = getattr(lr_scheduler, 'base_lr', learning_rate)
    if base_lr != learning_rate:
        warnings.warn('%s got learning_rate=%r and an lr_scheduler with base_lr=%r: '
                      'learning_rate wins, as in MXNet (the scheduler now starts from %r). To '
                      'take the scheduler\'s step size, leave learning_rate out.'
                      % (optimizer, learning_rate, base_lr, learning_rate), stacklevel=4)
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

    Each hyper-parameter listed in the class's ``CHECKS`` is checked whenever it is assigned,
    in the constructor and after (``opt.beta1 = 1.0`` raises ValueError as ``beta1=1.0`` does).
    ``clip_gradient`` follows MXNet: None, 0 or a negative value means no clipping.
    Weights must be floating point; other dtypes raise ValueError before any state exists.

    ``learning_rate`` left out with an ``lr_scheduler`` given: the scheduler's ``base_lr`` is the
    step size (MXNet's Optimizer would set it to the class default); both given: see
    :func:`step_size`. States end in the parameter's update count and name, and loaded states
    are checked against their parameters: see :mod:`namsg._states`.
    """

    #: {attribute: check}, applied to every assignment (see :func:`namsg._checks.checked`).
    CHECKS = BASE_CHECKS
    #: The length of a state saved without its count where the state's last element cannot
    #: tell (see namsg._states.split_count): not needed here, unlike for Lookahead.
    STATE_LENGTH = None

    def __init__(self, learning_rate=DefaultStepSize(0.001), lazy_update=True, **kwargs):
        # Read first: a bad value fails here, before anything is set up.
        aggregate_num = aggregation_size()
        # learning_rate reaches the check as MXNet's Optimizer assigns it (self.lr): None
        # without an lr_scheduler has become MXNet's default 0.01 there.
        super().__init__(learning_rate=step_size(learning_rate, kwargs.get('lr_scheduler'),
                                                 type(self).__name__), **kwargs)
        self.lazy_update = lazy_update
        # The Updater hands this many parameters of one dtype to one update_multi_precision
        # call: their loaded states are checked before any of them is updated, their counts
        # are written at once, and ARSG's fused operator updates them in one pass.
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

    def _step(self, weight, g, state, lr, t):
        """Update dense ``weight`` and ``state`` in place from the preprocessed gradient ``g``
        (a fresh array the step may overwrite), at this parameter's step ``t``."""
        raise NotImplementedError

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

    def update_multi_precision(self, index, weight, grad, state):
        """MXNet's entry point (Updater): one parameter, or lists of them (``aggregate_num``).
        The states this optimizer did not make are checked against their parameters
        (:func:`namsg._states.adopt_states`) before any of them is updated."""
        index, weight, grad, state = as_lists(index, weight, grad, state)
        adopt_states(self, index, weight, state)
        self._update_each(index, weight, grad, state)

    def _update_each(self, indices, weights, grads, states):
        """MXNet's one-parameter ``update_multi_precision`` for each, their counts written
        together at the end."""
        deferred = self.__dict__['_deferred_counts'] = ([], [])
        try:
            for index, weight, grad, state in zip(indices, weights, grads, states):
                Optimizer.update_multi_precision(self, index, weight, grad, state)
        finally:
            del self.__dict__['_deferred_counts']
            store_counts(self, *deferred)

    def _count_with_states(self, indices, counts):
        """MXNet's ``_update_count(indices)``, continuing from the counts the states carry
        (``counts`` from :func:`split_count`) and writing the new ones into them."""
        resume_counts(self, indices, counts)
        self._update_count(indices)
        deferred = self.__dict__.get('_deferred_counts')
        if deferred is None:
            store_counts(self, indices, counts)
        else:
            deferred[0].extend(indices)
            deferred[1].extend(counts)

    def update(self, index, weight, grad, state):
        assert isinstance(weight, NDArray) and isinstance(grad, NDArray)
        state, count = split_count(state)
        self._count_with_states([index], [count])
        lr = self._get_lr(index)
        wd = self._get_wd(index)
        t = self._index_update_count[index]
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
        if weight.dtype == numpy.float16:
            # Plain float16 (no multi_precision): compute in float32 against the float32 state.
            weight32 = weight.astype(numpy.float32)
            self._step(weight32, self._preprocess(grad.astype(numpy.float32), weight32, wd),
                       state, lr, t)
            nd.cast(weight32, dtype=numpy.float16, out=weight)
        else:
            self._step(weight, self._preprocess(grad, weight, wd), state, lr, t)

    def _preprocess(self, grad, weight, wd):
        """g = clip(rescale_grad * grad + wd * weight, clip_gradient), as MXNet's adam does."""
        g = grad * self.rescale_grad
        if wd:
            g += wd * weight
        clip = clip_threshold(self.clip_gradient)
        if clip is not None:
            nd.clip(g, -clip, clip, out=g)
        return g
