"""RSG: remote stochastic gradient (eq. (3) of the paper), as an MXNet optimizer."""

from mxnet.optimizer import register

from ._base import DefaultStepSize
from ._checks import check_unit_interval, of_value
from .arsg import ARSG

__all__ = ['RSG']


@register
class RSG(ARSG):
    r"""The RSG optimizer: ARSG without a preconditioner, the concise form eq. (3).

    At step t of a parameter::

        g = clip(rescale_grad * grad + wd * w, clip_gradient)
        m = beta * m + (1 - beta) * g
        w = w - lr * ((1 - mu) * m + mu * g)
        w = clip(w, lower_bound, upper_bound)   # only if a bound is given

    This is the original two-sequence form eq. (2), x_{t+1} = x_t - alpha m_t with the gradient
    taken at the observation point x_t - (1 + eta) alpha m_{t-1}, rewritten around the observation
    point, with mu = eta (1 - beta) / beta. mu = 0 is heavy ball (MXNet ``sgd`` with
    ``lr = learning_rate * (1 - beta)``, ``momentum = beta``); mu = 1 - beta is Nesterov's.
    ``learning_rate`` is the paper's alpha.

    Parameters
    ----------
    learning_rate : float, default 0.01
        The step size alpha, >= 0. Left out (or None) with an ``lr_scheduler``, the
        scheduler's ``base_lr`` is the step size; given with one, it wins (see
        :class:`namsg.ARSG`).
    beta : float, default 0.999
        Decay rate of the momentum m, in [0, 1).
    mu : float, default 0.1
        Observation factor, in [0, 1); may be changed between steps.
    lower_bound : float or None, default None
        The lower bound of the feasible box (every element); None: unbounded below.
    upper_bound : float or None, default None
        The upper bound of the feasible box, >= ``lower_bound``; None: unbounded above.
    lazy_update : bool, default True
        For ``row_sparse`` gradients, update only the rows present.
    fused : bool or None, default None
        As for :class:`namsg.ARSG`.
    skip_nonfinite_grad : bool, default False
        As for :class:`namsg.ARSG`; without it a NaN gradient element makes the element's m
        and weight NaN, +-inf makes them +-inf and -+inf.

    Raises
    ------
    ValueError
        As :class:`namsg.ARSG`, and for ``beta1``, ``beta2``, ``epsilon`` or
        ``preconditioner``, which RSG does not take.

    Notes
    -----
    Every :class:`mxnet.optimizer.Optimizer` argument is honoured as for :class:`namsg.ARSG`.
    State, per parameter: ``(m, (t, name))``, the update count and the parameter's name (see
    :class:`namsg.ARSG`). Registered as ``'rsg'``.
    """

    #: The ARSG arguments that RSG refuses: it has one decay rate and no preconditioner (the
    #: repr leaves them out: namsg._base).
    #:
    #: :meta private:
    NOT_TAKEN = ('beta1', 'beta2', 'epsilon', 'preconditioner')

    # beta is stored as beta1: name it as the user does.
    _CHECKS = dict(ARSG._CHECKS, beta1=of_value(check_unit_interval, 'beta'))

    def __init__(self, learning_rate=DefaultStepSize(0.01), beta=0.999, mu=0.1, **kwargs):
        for name in RSG.NOT_TAKEN:
            if name in kwargs:
                raise ValueError('RSG takes no %s: it has one decay rate, beta, and no '
                                 'preconditioner (use ARSG for those)' % name)
        super().__init__(learning_rate=learning_rate, beta1=beta, mu=mu,
                         preconditioner='none', **kwargs)

    @property
    def beta(self):
        """The momentum decay rate (stored as ``beta1``, shared with ARSG's code)."""
        return self.beta1
