"""Algebraic checks of the NumPy reference itself, and of RSG against MXNet's heavy ball."""

import mxnet as mx
import numpy as np
import pytest

import namsg  # noqa: F401
from namsg import reference as ref


def _quadratic(seed, dim=6):
    """A random convex quadratic 0.5 x'Hx - b'x with its gradient function."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(dim, dim))
    h = q @ q.T / dim + 0.1 * np.eye(dim)
    b = rng.normal(size=dim)
    return (lambda x: h @ x - b), rng.normal(size=dim)


@pytest.mark.parametrize('beta,eta', [(0.9, 0.9), (0.999, 0.5), (0.5, 3.0), (0.99, 0.0)])
def test_concise_form_tracks_observation_point_of_original_form(beta, eta):
    """Eq. (3) run from x_1 follows the observation points of eq. (2) exactly when alpha, beta,
    eta are constant (the substitution x_t = x_obs_t + eta alpha m_{t-1} is then exact)."""
    grad_at, x1 = _quadratic(seed=0)
    alpha, mu = 0.05, ref.observation_factor(beta, eta)
    x, x_obs, m = x1, x1, np.zeros_like(x1)
    y, m3 = x1, np.zeros_like(x1)
    for _ in range(200):
        x, x_obs, m = ref.rsg_original_step(x, x_obs, m, grad_at, alpha, beta, eta)
        y, m3 = ref.rsg_concise_step(y, m3, grad_at(y), alpha, beta, mu)
        np.testing.assert_allclose(y, x_obs, rtol=1e-10, atol=1e-12)


def test_nag_is_rsg_with_eta_equal_beta():
    """NAG corresponds to eta = beta, i.e. mu = 1 - beta."""
    assert ref.observation_factor(0.999, 0.999) == pytest.approx(0.001)


@pytest.mark.parametrize('beta,mu', [(0.9, 0.1), (0.999, 0.05), (0.0, 0.5)])
def test_fast_form_equals_concise_form(beta, mu):
    grad_at, x1 = _quadratic(seed=1)
    x3, m3 = x1, np.zeros_like(x1)
    x4, m4 = x1, np.zeros_like(x1)
    for _ in range(100):
        x3, m3 = ref.rsg_concise_step(x3, m3, grad_at(x3), 0.1, beta, mu)
        x4, m4 = ref.rsg_fast_step(x4, m4, grad_at(x4), 0.1, beta, mu)
        np.testing.assert_allclose(x4, x3, rtol=1e-10, atol=1e-12)


def test_rsg_with_mu_zero_is_heavy_ball():
    grad_at, x1 = _quadratic(seed=2)
    xh, mh = x1, np.zeros_like(x1)
    xr, mr = x1, np.zeros_like(x1)
    for _ in range(50):
        xh, mh = ref.hb_step(xh, mh, grad_at(xh), 0.2, 0.9)
        xr, mr = ref.rsg_concise_step(xr, mr, grad_at(xr), 0.2, 0.9, 0.0)
    np.testing.assert_allclose(xr, xh, rtol=1e-12)


def test_arsg_without_preconditioner_is_rsg():
    grad_at, x1 = _quadratic(seed=3)
    xa, state = x1, ref.arsg_init(x1, 1e-8)
    xr, mr = x1, np.zeros_like(x1)
    for _ in range(50):
        xa, state = ref.arsg_step(xa, state, grad_at(xa), 0.1, 0.9, 0.99, 0.2, 1e-8, 'none')
        xr, mr = ref.rsg_concise_step(xr, mr, grad_at(xr), 0.1, 0.9, 0.2)
    np.testing.assert_allclose(xa, xr, rtol=1e-12)


def test_arsg_first_step_uses_epsilon_seeded_vhat():
    """Step 1 by hand: vhat_1 = max(eps, (1-b2) g^2), no epsilon in the denominator."""
    x, g = np.array([1.0, 1.0]), np.array([1e-5, 2.0])
    b1, b2, mu, eps, a = 0.999, 0.99, 0.1, 1e-8, 0.01
    x1, state = ref.arsg_step(x, ref.arsg_init(x, eps), g, a, b1, b2, mu, eps)
    vhat = np.maximum(eps, (1 - b2) * g * g)
    expected = x - a * ((1 - mu) * (1 - b1) * g + mu * g) / np.sqrt(vhat)
    np.testing.assert_allclose(x1, expected, rtol=1e-15)
    np.testing.assert_array_equal(state.vhat, vhat)


# sgd_mom_update takes lr, momentum and wd as float32 parameters: the values here are exact in
# float32 so that float64 runs can agree to rounding.
@pytest.mark.parametrize('alpha,beta', [(1.0, 0.75), (2.0, 0.875), (0.5, 0.0)])
def test_mxnet_rsg_with_mu_zero_equals_mxnet_sgd_heavy_ball(alpha, beta):
    """mu = 0 is heavy ball: MXNet sgd with lr = alpha (1 - beta), momentum = beta."""
    rng = np.random.default_rng(4)
    w0 = rng.normal(size=(4, 3))
    weights = {name: mx.nd.array(w0, dtype='float64') for name in ('rsg', 'sgd')}
    rsg = mx.optimizer.get_updater(mx.optimizer.create('rsg', learning_rate=alpha, beta=beta,
                                                       mu=0.0, wd=2 ** -10))
    sgd = mx.optimizer.get_updater(mx.optimizer.create(
        'sgd', learning_rate=alpha * (1 - beta), momentum=beta, wd=2 ** -10))
    for _ in range(40):
        g = rng.normal(size=w0.shape)
        rsg(0, mx.nd.array(g, dtype='float64'), weights['rsg'])
        sgd(0, mx.nd.array(g, dtype='float64'), weights['sgd'])
    np.testing.assert_allclose(weights['rsg'].asnumpy(), weights['sgd'].asnumpy(), rtol=1e-9)
