"""ARSG: adaptive remote stochastic gradient (Algorithm 1 of the paper), as an MXNet optimizer."""

import numpy

from mxnet import ndarray as nd
from mxnet.optimizer import register

from . import kernels
from ._base import DefaultStepSize, ElementwiseOptimizer, _Plan
from ._checks import (ADAPTIVE_CHECKS, check_bounds, check_choice, check_unit_interval,
                      clip_threshold, of_value)

__all__ = ['ARSG', 'Arsg', 'PRECONDITIONERS']

#: The values of :class:`ARSG`'s ``preconditioner``: the preconditioners of eq. (7) it offers.
PRECONDITIONERS = ('amsgrad', 'adam', 'none')

#: The arrays of a state tuple (before its update count) under each preconditioner of eq. (7):
#: the momentum m, the second moment v and its running maximum vhat.
_STATE_SLOTS = {'amsgrad': ('m', 'v', 'vhat'), 'adam': ('m', 'v'), 'none': ('m',)}


@register
class ARSG(ElementwiseOptimizer):
    r"""The ARSG optimizer (adaptive remote stochastic gradient; NAMSG was its earlier name).

    Algorithm 1 of the paper, with MXNet's gradient conventions. At step t of a parameter
    (t counts that parameter's own updates, from ``begin_num_update`` + 1; loaded states
    continue the count they were saved with)::

        g     = clip(rescale_grad * grad + wd * w, clip_gradient)
        m     = beta1 * m + (1 - beta1) * g
        v     = beta2 * v + (1 - beta2) * g**2
        vhat  = max(vhat, v)                         # vhat starts at epsilon, not 0
        w     = w - lr * ((1 - mu) * m + mu * g) / sqrt(vhat)
        w     = clip(w, lower_bound, upper_bound)     # only if a bound is given

    No epsilon is added in the denominator: epsilon only seeds ``vhat`` (paper, Sec. 2).
    epsilon = 1e-8 is the paper's "fast mode"; epsilon = 1e-3 is its "fine mode", which
    generalizes better because it damps the adaptive step while ``v`` is small.

    ``mu`` is the observation factor: mu = 0 is heavy ball with the preconditioner, mu = 1 - beta1
    is Nesterov's momentum. It may be changed between steps (``opt.mu = ...`` or
    ``set_obs_fac_mu``), as the observation-boost policy does.

    The generalized form, eq. (7), replaces the preconditioner ``sqrt(vhat)``:

    * ``preconditioner='amsgrad'`` (default): as above.
    * ``preconditioner='adam'``: ``sqrt(v / (1 - beta2**t)) + epsilon`` (ADAM's bias-corrected
      second moment; epsilon is added here because v starts at 0).
    * ``preconditioner='none'``: 1, which is RSG, eq. (3) (see :class:`namsg.RSG`).

    The projection of Algorithm 1 onto F, weighted by diag(sqrt(vhat)), is for a box of
    elementwise bounds simply elementwise clipping, whatever the weighting.

    Parameters
    ----------
    learning_rate : float, default 0.001
        The step size alpha, >= 0. Left out (or None) with an ``lr_scheduler``, the
        scheduler's ``base_lr`` is the step size; given with one, it wins, as in MXNet: the
        scheduler's ``base_lr`` is set to it, with a warning if they differed. None without a
        scheduler: MXNet's ``Optimizer`` default 0.01.
    beta1 : float, default 0.999
        Decay rate of the momentum m, in [0, 1).
    beta2 : float, default 0.99
        Decay rate of the second-moment estimate v, in [0, 1).
    epsilon : float, default 1e-8
        Initial value of vhat ('amsgrad'), or the denominator's offset ('adam'); in
        [1.17549e-38, 3.40282e+38], float32's normal numbers (the states and MXNet's operators
        hold it in float32, where a smaller one is 0 and a zero gradient's update 0/0 = NaN).
    mu : float, default 0.1
        Observation factor, in [0, 1).
    preconditioner : {'amsgrad', 'adam', 'none'}, default 'amsgrad'
        The preconditioner of eq. (7). The states' layout follows it, so it is fixed once this
        optimizer has made states: changing it then raises ValueError, as does a state of
        another preconditioner's layout (e.g. loaded by ``Module.load_optimizer_states``).
    lower_bound : float or None, default None
        The lower bound of the feasible box F (every element); None: unbounded below.
    upper_bound : float or None, default None
        The upper bound of the feasible box F, >= ``lower_bound``; None: unbounded above.
    lazy_update : bool, default True
        For ``row_sparse`` gradients: update only the rows present in the gradient (their m, v,
        vhat and weights), like MXNet's ``adam(lazy_update=True)``. If False, the gradient is
        made dense and every row is updated.
    fused : bool or None, default None
        Use the fused update (one pass per array, many arrays per call; see
        :mod:`namsg.kernels`) for dense arrays on CPU contexts. None follows ``$NAMSG_FUSED``
        (default: fused where it can be built); True requires it; False takes the NDArray path.
        Both paths compute the same update, bit for bit in float32 and float16 (also for
        NaN and infinite values). Anything but a bool or None raises ValueError.
    skip_nonfinite_grad : bool, default False
        Leave a parameter alone (weight, master copy, m, v, vhat, update count) at a step
        whose gradient has a NaN or infinite element, count it in :attr:`nonfinite_skips`
        ({parameter name or index: skips}) and warn once per parameter (RuntimeWarning).
        Costs one ``multi_all_finite`` operator and one wait for the gradients per update
        call. Anything but True or False raises ValueError. Without it, see Notes.

    Other Parameters
    ----------------
    **kwargs
        Everything of :class:`mxnet.optimizer.Optimizer` is honoured: ``wd``,
        ``rescale_grad``, ``clip_gradient`` (None, 0 or negative: no clipping, MXNet's rule),
        ``lr_scheduler``, lr/wd multipliers, ``begin_num_update``, ``param_idx2name`` and
        ``multi_precision`` (float32 master weights for float16).

    Raises
    ------
    ValueError
        For a hyper-parameter out of its range (in the constructor or assigned later), a weight
        that is not floating point, a bad ``$NAMSG_AGGREGATION_SIZE``, or loaded states that do
        not fit their parameters (names both).

    Notes
    -----
    **State**, per parameter: a tuple of NDArrays on the weight's context, the slots (of the
    weight's shape; float32 for float16 weights, otherwise the weight's dtype), then the pair
    ``(t, name)``: ``(m, v, vhat, (t, name))`` for 'amsgrad', ``(m, v, (t, name))`` for
    'adam', ``(m, (t, name))`` for 'none'. ``t`` (int64, shape (1,)) is the parameter's update
    count, so that states saved without the optimizer (``Module.save_optimizer_states``)
    resume it; ``name`` (uint8, shape (128,)) is the parameter's name, checked when states are
    loaded (a shape that does not fit raises ValueError, other names warn with
    :class:`namsg.StatesRenamedWarning`). With ``multi_precision`` MXNet's convention wraps
    it as ``(float32 master weight, state)``. Update counts follow the parameter when its
    states are loaded on another device.

    **float16** weights without ``multi_precision`` keep their state in float32 and are
    updated in float32, because epsilon = 1e-8 underflows to 0 in float16 and would divide by
    zero. ``row_sparse`` weights take the lazy update. Weights must be floating point.

    **Non-finite gradients** without ``skip_nonfinite_grad`` follow the equations above in
    IEEE arithmetic, element by element, on both paths (and in the NumPy reference): a NaN
    gradient element makes that element's m, v, vhat (the maximum propagates NaN) and weight
    NaN; +-inf makes m infinite, v and vhat +inf and the weight NaN (inf / inf; with
    ``preconditioner='none'`` the weight becomes -+inf); ``clip_gradient`` turns +-inf into
    +-clip_gradient, not NaN. The term ``wd * w`` is part of g even for wd = 0, so a weight
    that is not finite makes its g, and every state, NaN from the next step on: such an
    element stays poisoned for good, as with MXNet's optimizers.

    ``$NAMSG_AGGREGATION_SIZE`` (default 128; an integer >= 0) sets how many parameters MXNet's
    Updater hands to one update call, which the fused update takes in one pass (for every
    optimizer of namsg: their loaded states are checked together, and ``skip_nonfinite_grad``
    checks their gradients at once).

    Examples
    --------
    Registered as ``'arsg'`` (importing namsg registers it); the repr shows the
    hyper-parameters:

    >>> import mxnet as mx, namsg
    >>> opt = mx.optimizer.create('arsg', learning_rate=0.01, epsilon=1e-3)
    >>> opt  # doctest: +NORMALIZE_WHITESPACE
    ARSG(learning_rate=0.01, beta1=0.999, beta2=0.99, epsilon=0.001, mu=0.1,
         preconditioner='amsgrad', wd=0.0)

    One step through MXNet's Updater, as ``gluon.Trainer`` and ``Module`` call it:

    >>> updater = mx.optimizer.get_updater(opt)
    >>> weight = mx.nd.ones((2,))
    >>> updater(0, mx.nd.array([0.5, -0.5]), weight)
    >>> weight.asnumpy().round(4)
    array([0.9899, 1.0101], dtype=float32)

    ARSGB is this optimizer driven by :class:`namsg.boost.ObservationBoost`; the paper's own
    class name :class:`namsg.Arsg` is this class too.
    """

    _CHECKS = dict(
        ADAPTIVE_CHECKS,
        mu=of_value(check_unit_interval, 'mu'),
        preconditioner=lambda optimizer, value: _check_preconditioner(optimizer, value),
        fused=lambda optimizer, value: _check_fused(value),
        # Each bound against the other one as it stands (the constructor sets lower first).
        lower_bound=lambda optimizer, value: check_bounds(
            value, optimizer.__dict__.get('upper_bound'))[0],
        upper_bound=lambda optimizer, value: check_bounds(
            optimizer.__dict__.get('lower_bound'), value)[1])

    def __init__(self, learning_rate=DefaultStepSize(0.001), beta1=0.999, beta2=0.99,
                 epsilon=1e-8, mu=0.1, preconditioner='amsgrad', lower_bound=None,
                 upper_bound=None, fused=None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.fused = fused
        # Each assignment is checked (_CHECKS).
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.mu = mu
        self.preconditioner = preconditioner
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound

    @property
    def mu(self):
        """The observation factor, in [0, 1); may be set between steps."""
        return self._mu

    @mu.setter
    def mu(self, value):
        # Checked in __setattr__ (_CHECKS); stored as _mu, the name saved states carry.
        self.__dict__['_mu'] = value

    def set_obs_fac_mu(self, mu):
        """Set the observation factor (the name used by the paper's own MXNet class)."""
        self.mu = mu

    def _apply(self, indices, weights, grads, states, masters, lrs, wds, plan=None):
        if self._fused_applies(weights, grads, masters, plan):
            self._fused_update(indices, weights, grads, states, masters, lrs, wds)
        else:
            super()._apply(indices, weights, grads, states, masters, lrs, wds, plan)

    def _fused_applies(self, weights, grads, masters, plan=None):
        # Updater hands over arrays of one device and one dtype; the per-array checks stay in
        # Python (isinstance) because each NDArray property is a call into MXNet, and the
        # call's plan keeps their answer for the same arrays.
        # The operator is looked for (built, loaded, or its absence warned about) only where it
        # would be used: GPU and row_sparse arrays take the NDArray path whatever `fused` says.
        if masters is not None and any(master is None for master in masters):
            return False        # one call has master copies for all its weights or for none
        if plan is None:
            plan = _Plan([], None, (), ())
            plan.take_arrays(weights, grads)
        if not plan.is_dense_cpu():
            return False
        return kernels.use_fused(self.fused)

    def _fused_update(self, indices, weights, grads, states, masters, lrs, wds):
        if self.preconditioner == 'adam':
            scales = [(1.0 - self.beta2 ** self._index_update_count[i]) ** -0.5 for i in indices]
        else:
            scales = [1.0] * len(indices)
        kernels.arsg_update(weights, grads, states, masters, lrs, wds, scales,
                            beta1=self.beta1, beta2=self.beta2, epsilon=self.epsilon, mu=self.mu,
                            rescale_grad=self.rescale_grad,
                            clip_gradient=clip_threshold(self.clip_gradient),
                            lower_bound=self.lower_bound, upper_bound=self.upper_bound,
                            preconditioner_index=PRECONDITIONERS.index(self.preconditioner))

    def _state_slots(self, weight, zeros):
        # From now on the preconditioner is fixed: the states' layout follows it.
        self.__dict__['_made_states'] = True
        slots = tuple(zeros() for _ in _STATE_SLOTS[self.preconditioner])
        if self.preconditioner == 'amsgrad':
            slots[2][:] = self.epsilon          # vhat starts at epsilon (paper, Sec. 2)
        return slots

    def _layout(self):
        return self.preconditioner

    def _check_layout(self, state):
        # States loaded from a file (Module.load_optimizer_states keeps the optimizer) may come
        # from another preconditioner; unchecked, 'amsgrad' would read an 'adam' state's v as m.
        if len(state) != len(_STATE_SLOTS[self.preconditioner]):
            made_by = [p for p, slots in _STATE_SLOTS.items() if len(slots) == len(state)]
            raise ValueError(
                '%s(preconditioner=%r) was given a state of %d arrays, %s: load states '
                'saved with the same preconditioner, or start without states'
                % (type(self).__name__, self.preconditioner, len(state),
                   'the layout of preconditioner=%r' % made_by[0] if made_by
                   else 'which no preconditioner makes'))

    def _step(self, weight, g, state, lr, t, arith, tmp):
        # The fused kernel's arithmetic, operator for operator (namsg._ops): m, then v, the
        # numerator (1 - mu) m + mu g into g, then the weight.
        m = state[0]
        arith.axpby(m, self.beta1, m, 1.0 - self.beta1, g, tmp)
        step_g, step_m = lr * self.mu, lr * (1.0 - self.mu)
        if self.preconditioner == 'none':
            arith.descend(weight, step_g, g, step_m, m, tmp)
        else:
            v = state[1]
            # (1 - beta2) g first, then times g: g**2 alone overflows float32 for |g| > 1.8e19.
            arith.square_scaled(tmp, 1.0 - self.beta2, g)
            arith.axpby(v, self.beta2, v, 1.0, tmp, None)
            arith.axpby_sgd_mom(g, step_g, step_m, m, weight, tmp)
            if self.preconditioner == 'amsgrad':
                vhat = state[2]
                nd.broadcast_maximum(vhat, v, out=vhat)
                arith.descend_scaled(weight, 1.0, g, vhat, 0.0, tmp, g)
            else:
                nd.sqrt(v, out=tmp)
                arith.scale(tmp, tmp, (1.0 - self.beta2 ** t) ** -0.5)
                nd._internal._plus_scalar(tmp, scalar=arith.scalar(self.epsilon), out=tmp)
                nd.elemwise_div(g, tmp, out=g)
                nd.elemwise_sub(weight, g, out=weight)

        if self.lower_bound is not None or self.upper_bound is not None:
            lower = -numpy.inf if self.lower_bound is None else self.lower_bound
            upper = numpy.inf if self.upper_bound is None else self.upper_bound
            nd.clip(weight, lower, upper, out=weight)


def _check_preconditioner(optimizer, value):
    check_choice('preconditioner', value, PRECONDITIONERS)
    current = optimizer.__dict__.get('preconditioner', value)
    if value != current and optimizer.__dict__.get('_made_states'):
        raise ValueError(
            'preconditioner=%r: this ARSG has made states for preconditioner=%r, whose '
            'layout the new one cannot read; create a new optimizer (with new states) to '
            'change the preconditioner' % (value, current))
    return value


def _check_fused(fused):
    # bool only: 1 == True passes a membership test, so fused=1 was taken for True.
    if fused is not None and not isinstance(fused, (bool, numpy.bool_)):
        raise ValueError('fused=%r: give True, False or None ($%s decides)'
                         % (fused, kernels.SWITCH))
    if fused is None:
        # $NAMSG_FUSED decides: a bad value fails here, where the error reaches the caller. At
        # the first update it can be inside a kvstore's callback, whose exceptions MXNet only
        # prints while the weights stay as they were.
        kernels.fused_switch()
    return fused


#: The paper's own MXNet class was named ``Arsg``; its constructor
#: ``Arsg(learning_rate, beta1, beta2, epsilon, mu, **kwargs)`` and ``set_obs_fac_mu`` work as-is.
Arsg = ARSG
