"""The paper's update rules in plain NumPy: the specification the MXNet optimizers are tested against.

Each function is one equation of the paper, written from the paper and nothing else; it knows
nothing of MXNet. Arrays are updated out of place (new arrays are returned) and computed in the
dtype of the inputs (tests pass float64).

Equation numbers are those of Section 2 ("Method") of the paper: Y. Chen et al., *An Adaptive
Remote Stochastic Gradient Method for Training Neural Networks*, arXiv:1905.01422 (2019):

* eq. (1)  heavy ball (HB):              :func:`hb_step`
* eq. (2)  RSG, original two-sequence:   :func:`rsg_original_step`
* eq. (3)  RSG, concise form:            :func:`rsg_concise_step`
* eq. (4)  RSG, fast form:               :func:`rsg_fast_step`
* Alg. 1   ARSG, and eq. (7) with other preconditioners: :func:`arsg_init`, :func:`arsg_step`

The gradient fed to these is what MXNet's optimizers feed their update (the paper does not say
how weight decay enters): :func:`mxnet_gradient`.
"""

from typing import NamedTuple

import numpy as np


def mxnet_gradient(grad, weight, rescale_grad=1.0, wd=0.0, clip_gradient=None):
    """g = clip(rescale_grad * grad + wd * weight, clip_gradient): coupled L2, then clipping,
    as MXNet's adaptive optimizers (and the paper's own MXNet class) do. As in MXNet,
    clip_gradient None, 0 or negative means no clipping."""
    g = rescale_grad * grad + wd * weight
    if clip_gradient is not None and clip_gradient > 0:
        g = np.clip(g, -clip_gradient, clip_gradient)
    return g


def hb_step(x, m, g, alpha, beta):
    """Eq. (1): m_t = b m_{t-1} + (1-b) g_t ; x_{t+1} = x_t - a m_t.  Returns (x, m)."""
    m = beta * m + (1 - beta) * g
    return x - alpha * m, m


def rsg_original_step(x, x_obs, m, grad_at, alpha, beta, eta):
    """Eq. (2), the original form of RSG, with the gradient taken at the observation point.

    m_t = b m_{t-1} + (1-b) grad(x_obs_t);  x_{t+1} = x_t - a m_t;
    x_obs_{t+1} = x_t - (1 + eta) a m_t.   ``grad_at(x)`` returns the gradient at x.
    Returns (x, x_obs, m).
    """
    m = beta * m + (1 - beta) * grad_at(x_obs)
    return x - alpha * m, x - (1 + eta) * alpha * m, m


def observation_factor(beta, eta):
    """mu = eta (1 - b) / b, the observation factor of eq. (3) for distance eta."""
    return eta * (1 - beta) / beta


def rsg_concise_step(x, m, g, alpha, beta, mu):
    """Eq. (3): m_t = b m_{t-1} + (1-b) g_t ; x_{t+1} = x_t - a ((1-mu) m_t + mu g_t).
    Returns (x, m)."""
    m = beta * m + (1 - beta) * g
    return x - alpha * ((1 - mu) * m + mu * g), m


def rsg_fast_step(x, m_tilde, g, alpha, beta, mu):
    """Eq. (4): m~_t = b m~_{t-1} + g_t ; x_{t+1} = x_t - a (1-b)(1-mu) m~_t - a mu g_t.
    Returns (x, m~)."""
    m_tilde = beta * m_tilde + g
    return x - alpha * (1 - beta) * (1 - mu) * m_tilde - alpha * mu * g, m_tilde


class ARSGState(NamedTuple):
    """Algorithm 1's state: momentum m, second moment v, its running maximum vhat, step count t."""
    #: The momentum m_t, of x's shape and dtype (0 after :func:`arsg_init`).
    m: np.ndarray
    #: The second-moment estimate v_t, the average of g^2, of x's shape and dtype.
    v: np.ndarray
    #: The running maximum of v_t, of x's shape and dtype, started at epsilon (Algorithm 1,
    #: line 1); its square root is the 'amsgrad' preconditioner.
    vhat: np.ndarray
    #: The steps taken, t (0 after :func:`arsg_init`).
    t: int


def arsg_init(x, epsilon):
    """Algorithm 1, line 1: m_0 = 0, v_0 = 0, vhat_0 = epsilon (elementwise)."""
    return ARSGState(m=np.zeros_like(x), v=np.zeros_like(x),
                     vhat=np.full_like(x, epsilon), t=0)


def arsg_step(x, state, g, alpha, beta1, beta2, mu, epsilon, preconditioner='amsgrad',
              lower=None, upper=None):
    """One iteration of Algorithm 1 (lines 4-7), or of eq. (7) with another preconditioner.

    m_t = b1 m_{t-1} + (1-b1) g_t;  v_t = b2 v_{t-1} + (1-b2) g_t^2;
    'amsgrad' (Algorithm 1): vhat_t = max(vhat_{t-1}, v_t), P_t = sqrt(vhat_t);
    'adam':  P_t = sqrt(v_t / (1 - b2^t)) + eps (ADAM's bias-corrected second moment);
    'none':  P_t = 1 (RSG, eq. (3));
    x_{t+1} = Proj_[lower, upper](x_t - a ((1-mu) m_t + mu g_t) / P_t).
    For a box, the projection weighted by diag(sqrt(vhat_t)) is elementwise clipping.
    Returns (x, state).
    """
    t = state.t + 1
    m = beta1 * state.m + (1 - beta1) * g
    v = beta2 * state.v + (1 - beta2) * g * g
    vhat = np.maximum(state.vhat, v)
    if preconditioner == 'amsgrad':
        p = np.sqrt(vhat)
    elif preconditioner == 'adam':
        p = np.sqrt(v / (1 - beta2 ** t)) + epsilon
    elif preconditioner == 'none':
        p = 1.0
    else:
        raise ValueError('unknown preconditioner %r' % (preconditioner,))
    x = x - alpha * ((1 - mu) * m + mu * g) / p
    if lower is not None or upper is not None:
        x = np.clip(x, -np.inf if lower is None else lower, np.inf if upper is None else upper)
    return x, ARSGState(m=m, v=v, vhat=vhat, t=t)



# --- The baselines the paper compares with ------------------------------------------------------

class AdaptiveState(NamedTuple):
    """First and second moments, AMSGRAD's running maximum, and the step count."""
    #: The first moment m_t, of x's shape and dtype (0 after :func:`adaptive_init`).
    m: np.ndarray
    #: The second moment v_t, the average of g^2, of x's shape and dtype.
    v: np.ndarray
    #: AMSGRAD's running maximum of v_t (0 after :func:`adaptive_init`); RAdam and NAdam keep
    #: it unchanged.
    vhat: np.ndarray
    #: The steps taken, t (0 after :func:`adaptive_init`).
    t: int


def adaptive_init(x):
    """m_0 = v_0 = vhat_0 = 0."""
    return AdaptiveState(np.zeros_like(x), np.zeros_like(x), np.zeros_like(x), 0)


def amsgrad_step(x, state, g, alpha, beta1, beta2, epsilon):
    """Eq. (8) (Reddi et al.): m_t = b1 m + (1-b1) g; v_t = b2 v + (1-b2) g^2;
    vhat_t = max(vhat_{t-1}, v_t); x_{t+1} = x_t - a m_t / (sqrt(vhat_t) + eps). No bias
    correction. Returns (x, state)."""
    m = beta1 * state.m + (1 - beta1) * g
    v = beta2 * state.v + (1 - beta2) * g * g
    vhat = np.maximum(state.vhat, v)
    return x - alpha * m / (np.sqrt(vhat) + epsilon), AdaptiveState(m, v, vhat, state.t + 1)


def radam_step(x, state, g, alpha, beta1, beta2, epsilon, rectify_threshold=5.0):
    """RAdam, Algorithm 2 of Liu et al. (2020), "On the variance of the adaptive learning rate"::

        m_t = b1 m + (1-b1) g;  v_t = b2 v + (1-b2) g^2;  mhat_t = m_t / (1 - b1^t);
        rho_inf = 2 / (1 - b2) - 1;  rho_t = rho_inf - 2 t b2^t / (1 - b2^t);
        if rho_t > threshold (the paper writes 4; its released code, and Ranger, use 5):
            r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            x_{t+1} = x_t - a r_t mhat_t sqrt(1 - b2^t) / (sqrt(v_t) + eps)
        else (variance not tractable yet: SGD with momentum):
            x_{t+1} = x_t - a mhat_t

    The eps placement is that of the released code: l_t = sqrt(1 - b2^t) / (sqrt(v_t) + eps).
    """
    t = state.t + 1
    m = beta1 * state.m + (1 - beta1) * g
    v = beta2 * state.v + (1 - beta2) * g * g
    mhat = m / (1 - beta1 ** t)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)
    if rho_t > rectify_threshold:
        r = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        x = x - alpha * r * mhat * np.sqrt(1 - beta2 ** t) / (np.sqrt(v) + epsilon)
    else:
        x = x - alpha * mhat
    return x, AdaptiveState(m, v, state.vhat, t)


def nadam_step(x, state, g, alpha, beta1, beta2, epsilon, schedule_decay=0.004,
               m_schedule=1.0):
    """NAdam as Dozat (2016) gives it, with the momentum schedule
    mu_t = b1 (1 - 0.5 * 0.96^(t psi)), psi = schedule_decay, and its product kept per parameter:

    M_t = prod_{i<=t} mu_i;  ghat = g / (1 - M_t);  m_t = b1 m + (1-b1) g;
    mhat = m_t / (1 - M_t mu_{t+1});  v_t = b2 v + (1-b2) g^2;  vhat = v_t / (1 - b2^t);
    mbar = (1 - mu_t) ghat + mu_{t+1} mhat;  x_{t+1} = x_t - a mbar / (sqrt(vhat) + eps).
    Returns (x, state, M_t); pass M_t back as ``m_schedule``.
    """
    t = state.t + 1
    mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * schedule_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * schedule_decay))
    m_schedule = m_schedule * mu_t
    m = beta1 * state.m + (1 - beta1) * g
    v = beta2 * state.v + (1 - beta2) * g * g
    mbar = (1 - mu_t) * g / (1 - m_schedule) + mu_next * m / (1 - m_schedule * mu_next)
    x = x - alpha * mbar / (np.sqrt(v / (1 - beta2 ** t)) + epsilon)
    return x, AdaptiveState(m, v, state.vhat, t), m_schedule


def lookahead_sync(fast, slow, alpha):
    """Lookahead (Zhang et al., 2019), after every k inner steps: the slow weights move toward
    the fast ones, phi = phi + alpha (theta - phi), and the fast weights restart from them.
    Returns (fast, slow), equal."""
    slow = slow + alpha * (fast - slow)
    return slow.copy(), slow
