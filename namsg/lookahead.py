"""Lookahead (Zhang et al., 2019) around any MXNet optimizer, and RANGER = Lookahead(RAdam)."""

from functools import partial

import numpy
from mxnet import ndarray as nd
from mxnet.optimizer import Optimizer, create, register

from . import _nonfinite, _ops, kvstore_sync
from .radam import RAdam
from ._base import (DefaultStepSize, ElementwiseOptimizer, adopt_states, all_rows, as_lists,
                    check_trainer_states, continue_update_counts, dense_rows, describe,
                    new_trailer, repr_fields, resume_counts, split_count, split_masters,
                    store_counts, write_rows)
from ._checks import (aggregation_size, check_bool, check_floating_weight,
                      check_integer_at_least, check_number_in, checked, of_value)

__all__ = ['Lookahead', 'Ranger']


@register
class Lookahead(Optimizer):
    r"""Lookahead: k steps of an inner ("fast") optimizer, then a step of the slow weights.

    For each parameter, with slow weights phi starting at the initial weights::

        w = inner_update(w, grad)               # every step
        every k-th step of this parameter:
            phi = phi + alpha * (w - phi)
            w   = phi

    The wrapper behaves as the inner optimizer for everything MXNet sets or reads
    (learning rate and scheduler, ``rescale_grad`` set by ``Trainer.step``, multipliers,
    update counts, ``param_dict``): those attributes live on the inner optimizer.

    Parameters
    ----------
    optimizer : str or mxnet.optimizer.Optimizer, default 'sgd'
        The inner optimizer, or its registered name; extra keyword arguments go to it.
    k : int, default 5
        Inner steps between two slow-weight steps, >= 1.
    alpha : float, default 0.5
        Slow-weight step size, in (0, 1] (1 makes Lookahead a no-op).
    skip_nonfinite_grad : bool, default False
        Leave a parameter (weight, slow weights, inner state, update count and so the k-cycle)
        untouched at a step whose gradient has a NaN or infinite element, whatever the inner
        optimizer; counted in :attr:`nonfinite_skips` and warned about once per parameter
        (``RuntimeWarning``). Without it a non-finite gradient reaches the slow weights
        at the next slow step. An inner optimizer of this package that skips a step itself
        (its own ``skip_nonfinite_grad``) does not advance the k-cycle either.

    Raises
    ------
    ValueError
        For ``k`` or ``alpha`` out of range, an ``optimizer`` that is none, arguments for an
        optimizer instance, a bad ``$NAMSG_AGGREGATION_SIZE`` (see :class:`namsg.ARSG`), a
        weight that is not floating point, or loaded states that do not fit their
        parameters.

    Notes
    -----
    State per parameter: ``(phi, inner_state, (t, name))``, ``phi`` in float32 for float16
    weights and dense for ``row_sparse`` weights (the slow step moves every row); ``t`` is the
    inner optimizer's update count, which the k-cycle follows, and ``name`` the parameter's,
    saved with the states whatever the inner optimizer. Weights
    must be floating point: others raise ValueError in ``create_state``. With
    ``multi_precision`` the base class wraps it as ``(float32 master, state)``. Registered as
    ``'lookahead'``; its repr shows the inner optimizer's.
    """

    # Attributes that belong to the wrapper; every other one is the inner optimizer's.
    _OWN = frozenset(('optimizer', 'k', 'alpha', 'aggregate_num', 'skip_nonfinite_grad',
                      '_nonfinite_skips'))
    #: The wrapper's own checks (the inner optimizer checks its attributes itself).
    _CHECKS = dict(k=of_value(check_integer_at_least, 'k', 1),
                  alpha=of_value(check_number_in, 'alpha', 0.0, 1.0, True),
                  skip_nonfinite_grad=of_value(check_bool, 'skip_nonfinite_grad'))
    #: (slow, inner_state): a state of namsg 0.1.0, without its count (see split_count).
    #:
    #: :meta private:
    STATE_LENGTH = 2
    #: Default for wrappers pickled before the option existed (the constructor's argument is
    #: the documented one).
    #:
    #: :meta private:
    skip_nonfinite_grad = False
    # The property documents itself (namsg._nonfinite).
    nonfinite_skips = _nonfinite.NONFINITE_SKIPS

    def __init__(self, optimizer='sgd', k=5, alpha=0.5, skip_nonfinite_grad=False, **kwargs):
        if isinstance(optimizer, str):
            optimizer = create(optimizer, **kwargs)
        elif not isinstance(optimizer, Optimizer):
            raise ValueError('optimizer=%r is not an optimizer: give an '
                             'mxnet.optimizer.Optimizer or a registered name' % (optimizer,))
        elif kwargs:
            raise ValueError('Lookahead got optimizer arguments %s for an optimizer instance: '
                             'set them on the instance' % sorted(kwargs))
        # Optimizer.__init__ is not called: its attributes are the inner optimizer's.
        object.__setattr__(self, 'optimizer', optimizer)
        self.k = k              # checked (_CHECKS)
        self.alpha = alpha
        self.skip_nonfinite_grad = skip_nonfinite_grad
        object.__setattr__(self, '_nonfinite_skips', {})
        # The Updater hands this many parameters to one update_multi_precision call: their
        # loaded states are checked before any is updated, skip_nonfinite_grad checks their
        # gradients at once, and an inner optimizer of this package updates them in one call
        # (MXNet's take them one by one: they may not take lists).
        object.__setattr__(self, 'aggregate_num', aggregation_size())

    def __getattr__(self, name):
        # Only called for attributes not found on the wrapper itself.
        if name in Lookahead._OWN or name.startswith('__'):
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __setattr__(self, name, value):
        # The wrapper is what the servers run: it forwards changes of its settings (k, alpha
        # and the inner optimizer's) to them.
        if name in Lookahead._OWN:
            value = checked(self, name, value)
            kvstore_sync.set_setting(self, name, value, partial(object.__setattr__, self))
        else:
            kvstore_sync.set_setting(self, name, value, partial(setattr, self.optimizer))
            if name == 'param_dict':
                # Trainer.load_states ends here (see ElementwiseOptimizer.param_dict).
                check_trainer_states(self, value)

    def __repr__(self):
        # MXNet's own optimizers print as <... object at 0x...>.
        inner = self.optimizer if type(self.optimizer).__repr__ is not object.__repr__ \
            else describe(self.optimizer)
        return describe(self, [('optimizer', str(inner))] + self._own_fields())

    def _own_fields(self):
        # skip_nonfinite_grad only when set, as repr_fields shows a bool at its default.
        fields = [('k', repr(self.k)), ('alpha', repr(self.alpha))]
        if self.skip_nonfinite_grad:
            fields.append(('skip_nonfinite_grad', 'True'))
        return fields

    def __getstate__(self):
        state = {name: self.__dict__[name] for name in Lookahead._OWN if name in self.__dict__}
        # An inner MXNet optimizer drops Gluon's lr_mult / wd_mult (its param_dict): carry them.
        state['multipliers'] = kvstore_sync.multipliers(self.optimizer)
        return kvstore_sync.pickled_state(self, state)

    def __setstate__(self, state):
        lr_mult, wd_mult = state.pop('multipliers', ({}, {}))
        for name, value in state.items():
            object.__setattr__(self, name, value)
        self.optimizer.lr_mult.update(lr_mult)
        self.optimizer.wd_mult.update(wd_mult)

    def create_state(self, index, weight):
        check_floating_weight(weight.dtype, 'Lookahead')
        # Slow weights of float16 parameters are kept in float32, like the state of the
        # inner optimizers of this package: alpha * (w - phi) is below float16's resolution.
        # They are dense for a row_sparse weight: every row takes the slow step.
        slow = _dense(weight).astype(
            numpy.float32 if weight.dtype == numpy.float16 else weight.dtype)
        return (slow, self.optimizer.create_state(index, weight),
                new_trailer(self.optimizer, index, weight))

    def create_state_multi_precision(self, index, weight):
        # The inner optimizers of this package keep float32 state for float16 weights, and the
        # slow weights are float32 too: MXNet's warning about accumulating in float16 would
        # mislead. Other inner optimizers (MXNet's sgd) do accumulate in float16: warn.
        if weight.dtype == numpy.float16 and not self.multi_precision \
                and isinstance(self.optimizer, ElementwiseOptimizer):
            return self.create_state(index, weight)
        return Optimizer.create_state_multi_precision(self, index, weight)

    def update(self, index, weight, grad, state):
        """MXNet's ``Optimizer.update``: one parameter (or lists of them), ``state`` as
        ``create_state`` made it (no multi-precision master copy)."""
        self._update_all(*as_lists(index, weight, grad, state), masters=None)

    def update_multi_precision(self, index, weight, grad, state):
        """MXNet's entry point (Updater): one parameter, or lists of them (``aggregate_num``);
        the states this optimizer did not make are checked against their parameters first,
        before any is updated or skipped (``skip_nonfinite_grad``), as by every optimizer of
        this package."""
        indices, weights, grads, states = as_lists(index, weight, grad, state)
        adopt_states(self, indices, weights, states, owner=self.optimizer,
                     length=Lookahead.STATE_LENGTH)
        self._update_all(indices, weights, grads, states, split_masters(self, weights, states))

    def _update_all(self, indices, weights, grads, states, masters):
        if self.skip_nonfinite_grad:
            _, (indices, weights, grads, states, masters) = _nonfinite.drop_nonfinite(
                self, indices, weights, grads, states, masters)
            if not indices:
                return
        slots, counts = zip(*(split_count(s, Lookahead.STATE_LENGTH) for s in states))
        slows, inner_states = zip(*slots)
        inner = self.optimizer
        # The k-cycle follows the inner count, which must continue from loaded states and on
        # another device for any inner optimizer (this package's do it themselves, MXNet's
        # do not).
        resume_counts(inner, indices, counts)
        continue_update_counts(inner, indices)
        if isinstance(inner, ElementwiseOptimizer):
            # All in one call (ARSG's fused operator takes them at once), which writes these
            # states' counts with its own in one operation; a parameter that it skips (its own
            # skip_nonfinite_grad) does not advance its k-cycle either.
            updated = inner._update_all(indices, weights, grads, list(inner_states), masters,
                                        counts)
        else:
            updated = range(len(indices))
            for j, index in enumerate(indices):
                self._inner_update(index, weights[j], grads[j], inner_states[j],
                                   masters[j] if masters else None)
            store_counts(inner, indices, counts)
        for j in updated:
            # The inner update counted this step (per parameter, per device).
            if inner._index_update_count[indices[j]] % self.k == 0:
                self._slow_step(weights[j], slows[j], masters[j] if masters else None)

    def _inner_update(self, index, weight, grad, state, master):
        """One step of an inner optimizer of MXNet's own, through its update_multi_precision
        (its fastest path; for a weight that is not float16, its plain update)."""
        if master is None:
            self.optimizer.update_multi_precision(index, weight, grad, state)
        else:
            # What MXNet's Optimizer.update_multi_precision does with Lookahead's master copy:
            # the float32 master takes the step, the float16 weight is it rounded.
            self.optimizer.update_multi_precision(index, master,
                                                  grad.astype(numpy.float32), state)
            nd.cast(master, dtype=weight.dtype, out=weight)

    def _slow_step(self, weight, slow, master=None):
        """phi = phi + alpha (w - phi); w = phi, where w is the float32 ``master`` copy of a
        float16 weight when there is one (the weight the inner optimizer updated)."""
        if master is not None:
            self._slow_step(master, slow)
            nd.cast(master, dtype=weight.dtype, out=weight)
            return
        dense = _dense(weight)
        diff, = _ops.scratch(self, slow, slow.dtype, 1)
        if dense.dtype != slow.dtype:
            nd.cast(dense, dtype=slow.dtype, out=diff)
            dense = diff
        nd.elemwise_sub(dense, slow, out=diff)
        _ops.arith(slow.dtype, slow.context.device_type).axpby(slow, 1.0, slow, self.alpha,
                                                               diff, diff)
        if weight.stype == 'row_sparse':
            write_rows(weight, all_rows(weight), slow.astype(weight.dtype))
        else:
            nd.cast(slow, dtype=weight.dtype, out=weight)


def _dense(weight):
    """``weight`` itself, or a dense copy of a row_sparse one (which stores every row)."""
    if weight.stype != 'row_sparse':
        return weight
    return dense_rows(weight, all_rows(weight))


@register
class Ranger(Lookahead):
    r"""RANGER: Lookahead around RAdam (Wright's Ranger, as the paper compares with).

    The paper's tuple (a, b1, b2, k, alpha_LA) is ``Ranger(learning_rate=a, beta1=b1,
    beta2=b2, k=k, alpha=alpha_LA)``. See :class:`namsg.RAdam` and :class:`namsg.Lookahead`.

    Parameters
    ----------
    learning_rate : float, default 0.001
        RAdam's step size; left out with an ``lr_scheduler``, the scheduler's ``base_lr`` (see
        :class:`namsg.ARSG`).
    beta1 : float, default 0.95
        RAdam's decay rate of m, in [0, 1) (Ranger's default).
    beta2 : float, default 0.999
        RAdam's decay rate of v, in [0, 1).
    epsilon : float, default 1e-5
        Added to sqrt(v), in [1.17549e-38, 3.40282e+38] (as for :class:`namsg.ARSG`; 1e-5 is
        Ranger's default).
    k : int, default 6
        Inner steps between two slow-weight steps, >= 1 (Ranger's default).
    alpha : float, default 0.5
        Slow-weight step size, in (0, 1].
    skip_nonfinite_grad : bool, default False
        See :class:`namsg.Lookahead`.

    Other Parameters
    ----------------
    **kwargs
        Go to RAdam: ``wd``, ``rescale_grad``, ``rectify_threshold``, ...

    Notes
    -----
    Registered as ``'ranger'``.
    """

    def __init__(self, learning_rate=DefaultStepSize(0.001), beta1=0.95, beta2=0.999,
                 epsilon=1e-5, k=6, alpha=0.5, skip_nonfinite_grad=False, **kwargs):
        super().__init__(RAdam(learning_rate=learning_rate, beta1=beta1, beta2=beta2,
                               epsilon=epsilon, **kwargs), k=k, alpha=alpha,
                         skip_nonfinite_grad=skip_nonfinite_grad)

    def __repr__(self):
        # RAdam's settings are Ranger's own arguments.
        return describe(self, repr_fields(self.optimizer) + self._own_fields())
