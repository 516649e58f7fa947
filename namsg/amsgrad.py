"""AMSGRAD (Reddi et al., eq. (8) of the paper), as an MXNet optimizer."""

from mxnet import ndarray as nd
from mxnet.optimizer import register

from ._base import DefaultStepSize, ElementwiseOptimizer
from ._checks import ADAPTIVE_CHECKS

__all__ = ['AMSGrad']


@register
class AMSGrad(ElementwiseOptimizer):
    r"""The AMSGRAD optimizer, eq. (8) of the paper, without bias correction.

    At step t of a parameter::

        g    = clip(rescale_grad * grad + wd * w, clip_gradient)
        m    = beta1 * m + (1 - beta1) * g
        v    = beta2 * v + (1 - beta2) * g**2
        vhat = max(vhat, v)                     # vhat starts at 0
        w    = w - lr * m / (sqrt(vhat) + epsilon)

    Parameters
    ----------
    learning_rate : float, default 0.001
        The step size alpha, >= 0. Left out (or None) with an ``lr_scheduler``, the
        scheduler's ``base_lr`` is the step size; given with one, it wins (see
        :class:`namsg.ARSG`).
    beta1 : float, default 0.9
        Decay rate of m, in [0, 1).
    beta2 : float, default 0.999
        Decay rate of v, in [0, 1).
    epsilon : float, default 1e-8
        Added to the denominator, in [1.17549e-38, 3.40282e+38] (as for :class:`namsg.ARSG`).
    lazy_update : bool, default True
        For ``row_sparse`` gradients, update only the rows present.
    skip_nonfinite_grad : bool, default False
        Leave a parameter (weight, states, update count) untouched at a step whose gradient has
        a NaN or infinite element; counted in :attr:`nonfinite_skips`, warned about once per
        parameter. Without it NaN and infinities follow the equations (IEEE arithmetic) and
        poison the elements they reach, as in MXNet's optimizers (see :class:`namsg.ARSG`).

    Raises
    ------
    ValueError
        For a hyper-parameter out of range, a bad ``$NAMSG_AGGREGATION_SIZE`` (see
        :class:`namsg.ARSG`), a weight that is not floating point, or loaded states that do
        not fit their parameters.

    Notes
    -----
    MXNet's own arguments (wd, rescale_grad, clip_gradient, lr_scheduler, multipliers,
    multi_precision, ...) work as for every MXNet optimizer. State per parameter:
    ``(m, v, vhat, (t, name))``, the arrays float32 for float16 weights; ``t`` and ``name`` are
    the update count and the parameter's name, saved with the states (see
    :class:`namsg.ARSG`). Registered as ``'amsgrad'``.
    """

    _CHECKS = ADAPTIVE_CHECKS

    def __init__(self, learning_rate=DefaultStepSize(0.001), beta1=0.9, beta2=0.999,
                 epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        # Each assignment is checked (_CHECKS).
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon

    def _state_slots(self, weight, zeros):
        return (zeros(), zeros(), zeros())

    def _step(self, weight, g, state, lr, t, arith, tmp):
        m, v, vhat = state
        arith.axpby(m, self.beta1, m, 1.0 - self.beta1, g, tmp)
        # (1 - beta2) g first, then times g: g**2 alone overflows float32 beyond 1.8e19.
        arith.square_scaled(tmp, 1.0 - self.beta2, g)
        arith.axpby(v, self.beta2, v, 1.0, tmp, None)
        nd.broadcast_maximum(vhat, v, out=vhat)
        arith.descend_scaled(weight, lr, m, vhat, self.epsilon, tmp, g)
