"""RAdam (Liu et al., rectified adaptive learning rate), as an MXNet optimizer."""

import math

from mxnet.optimizer import register

from ._base import DefaultStepSize, ElementwiseOptimizer
from ._checks import ADAPTIVE_CHECKS, check_number_in, of_value

__all__ = ['RAdam']


@register
class RAdam(ElementwiseOptimizer):
    r"""The RAdam optimizer: Adam whose adaptive step is rectified for the variance of v early on.

    At step t of a parameter (Algorithm 2 of Liu et al., 2020)::

        g       = clip(rescale_grad * grad + wd * w, clip_gradient)
        m       = beta1 * m + (1 - beta1) * g
        v       = beta2 * v + (1 - beta2) * g**2
        rho_inf = 2 / (1 - beta2) - 1
        rho_t   = rho_inf - 2 t beta2**t / (1 - beta2**t)
        if rho_t > rectify_threshold:
            r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            w = w - lr * r * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + epsilon)
        else:                                   # warm-up: SGD with (bias-corrected) momentum
            w = w - lr / (1 - beta1**t) * m

    Weight decay is coupled L2 (it enters g), like every MXNet optimizer; the released RAdam
    code decays the weights directly instead.

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
        Added to sqrt(v), in [1.17549e-38, 3.40282e+38] (as for :class:`namsg.ARSG`).
    rectify_threshold : float, default 5
        The rectified step is taken once rho_t exceeds this; the paper's algorithm says 4, its
        released code (and Ranger) 5. Must be >= 4 (r_t is undefined below).
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
        As :class:`namsg.AMSGrad` does, and for ``rectify_threshold`` below 4.

    Notes
    -----
    State per parameter: ``(m, v, (t, name))``, the arrays float32 for float16 weights; ``t``
    and ``name`` are the update count and the parameter's name, saved with the states (see
    :class:`namsg.ARSG`). Registered as ``'radam'``.
    """

    # rectify_threshold >= 4: r_t is undefined below.
    _CHECKS = dict(ADAPTIVE_CHECKS, rectify_threshold=of_value(
        check_number_in, 'rectify_threshold', 4.0, math.inf, False))

    def __init__(self, learning_rate=DefaultStepSize(0.001), beta1=0.9, beta2=0.999,
                 epsilon=1e-8, rectify_threshold=5.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        # Each assignment is checked (_CHECKS).
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.rectify_threshold = rectify_threshold

    def _state_slots(self, weight, zeros):
        return (zeros(), zeros())

    def _step(self, weight, g, state, lr, t, arith, tmp):
        m, v = state
        arith.axpby(m, self.beta1, m, 1.0 - self.beta1, g, tmp)
        # (1 - beta2) g first, then times g: g**2 alone overflows float32 beyond 1.8e19.
        arith.square_scaled(tmp, 1.0 - self.beta2, g)
        arith.axpby(v, self.beta2, v, 1.0, tmp, None)

        bias1 = 1.0 - self.beta1 ** t
        bias2 = 1.0 - self.beta2 ** t
        rho_inf = 2.0 / (1.0 - self.beta2) - 1.0
        rho_t = rho_inf - 2.0 * t * self.beta2 ** t / bias2
        if rho_t > self.rectify_threshold:
            r = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                          / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            arith.descend_scaled(weight, lr * r * math.sqrt(bias2) / bias1, m, v, self.epsilon,
                                 tmp, g)
        else:
            arith.axpby(weight, 1.0, weight, -lr / bias1, m, tmp)
