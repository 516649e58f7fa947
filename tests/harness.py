"""Run a case through MXNet's updater and through the NumPy reference, on the same data."""

import mxnet as mx
import numpy as np

from namsg import reference as ref
from namsg._states import split_count

SHAPES = [(7, 5), (3,), (1,), (33,)]   # odd sizes, a single element, several arrays


def make_problem(steps=50, seed=0, shapes=SHAPES):
    """Initial weights and per-step gradients. The gradient scale shrinks and grows over the run
    so that v falls below vhat at times and the max in Algorithm 1 matters."""
    rng = np.random.default_rng(seed)
    weights = [rng.uniform(-0.5, 0.5, size=s) for s in shapes]
    scale = np.exp(np.sin(np.arange(steps) / 5.0))
    grads = [[rng.normal(size=s) * scale[k] for s in shapes] for k in range(steps)]
    return weights, grads


def make_updater(case, multi_precision=False, fused=None, **extra):
    """The case's optimizer inside mx.optimizer's Updater, as gluon.Trainer drives it.
    ``fused`` (True/False) picks the ARSG path; None passes nothing. ``extra``: more optimizer
    arguments."""
    kwargs = dict(case.make_kwargs(), **extra)
    if fused is not None:
        kwargs['fused'] = fused
    opt = mx.optimizer.create(case.optimizer, multi_precision=multi_precision,
                              param_idx2name=case.idx2name, **kwargs)
    if case.lr_mult:
        opt.set_lr_mult(case.lr_mult)
    if case.wd_mult or case.idx2name:
        opt.set_wd_mult(case.wd_mult)
    return mx.optimizer.get_updater(opt)


def apply_steps(updater, case, ws, grads, first_step=1, rows=None):
    """Feed ``grads`` (a list per step) to the NDArray weights ``ws`` in one Updater call per
    step, as gluon.Trainer does (so aggregating optimizers get all arrays at once); steps count
    from ``first_step`` for the case's mu schedule. ``rows``: the rows that row_sparse
    gradients store (the same for every array and step), or None for dense gradients."""
    indices = list(range(len(ws)))
    for k, step_grads in enumerate(grads, start=first_step):
        if case.mu_at is not None:
            updater.optimizer.mu = case.mu_at(k)
        given = [_gradient(g, w.dtype, rows) for w, g in zip(ws, step_grads)]
        before = [g.asnumpy() for g in given]
        updater(indices, given, ws)
        # An optimizer must leave the gradients it is handed as they were, which MXNet's own
        # do not all do (adadelta on every release; adam, rmsprop and ftrl on 1.5, unknown to
        # the engine, hence the wait): a gradient read after trainer.step (its norm logged,
        # grad_req='add' kept) would not be backward's.
        mx.nd.waitall()
        for i, (g, b) in enumerate(zip(given, before)):
            np.testing.assert_array_equal(g.asnumpy(), b, err_msg='step %d wrote into the '
                                          'gradient of parameter %d' % (k, i))


def _gradient(g, dtype, rows):
    if rows is None:
        return mx.nd.array(g, dtype=dtype)
    stored = [r for r in rows if r < g.shape[0]]
    return mx.nd.sparse.row_sparse_array((mx.nd.array(g[stored], dtype=dtype),
                                          mx.nd.array(stored, dtype='int64')),
                                         shape=g.shape, dtype=dtype)


def run_mxnet(case, weights, grads, dtype='float32', multi_precision=False, fused=None,
              rows=None, **extra):
    """Run the case from ``weights`` over ``grads`` (row_sparse ones storing ``rows``, see
    :func:`apply_steps`). Returns (float64 weights, the updater)."""
    updater = make_updater(case, multi_precision, fused, **extra)
    ws = [mx.nd.array(w, dtype=dtype) for w in weights]
    apply_steps(updater, case, ws, grads, rows=rows)
    return [w.asnumpy().astype(np.float64) for w in ws], updater


def _inner_reference(name, kw):
    """(init(x), step(x, state, g, lr, mu)) of the NumPy reference for a registered name."""
    if name == 'arsg':
        eps = kw['epsilon']
        return (lambda x: ref.arsg_init(x, eps),
                lambda x, s, g, lr, mu: ref.arsg_step(
                    x, s, g, lr, kw['beta1'], kw['beta2'], mu, eps,
                    kw.get('preconditioner', 'amsgrad'), kw.get('lower_bound'),
                    kw.get('upper_bound')))
    if name == 'rsg':
        # RSG is eq. (3); arsg_step without a preconditioner is checked to equal it in
        # test_reference, and carries the step count that begin_num_update offsets.
        return (lambda x: ref.arsg_init(x, 1.0),
                lambda x, s, g, lr, mu: ref.arsg_step(
                    x, s, g, lr, kw['beta'], 0.0, mu, 1.0, 'none', kw.get('lower_bound'),
                    kw.get('upper_bound')))
    if name == 'amsgrad':
        return (ref.adaptive_init,
                lambda x, s, g, lr, mu: ref.amsgrad_step(x, s, g, lr, kw['beta1'], kw['beta2'],
                                                         kw['epsilon']))
    if name == 'radam':
        return (ref.adaptive_init,
                lambda x, s, g, lr, mu: ref.radam_step(x, s, g, lr, kw['beta1'], kw['beta2'],
                                                       kw['epsilon'],
                                                       kw.get('rectify_threshold', 5.0)))
    raise KeyError(name)


def reference_for(case):
    """(init, step, base_lr, base_mu) for the case, Lookahead included: the slow weights step
    every k-th count of the inner optimizer."""
    kw = case.kwargs
    if case.optimizer in ('ranger', 'lookahead'):
        inner_name = 'radam' if case.optimizer == 'ranger' else kw['optimizer']
        inner_init, inner_step = _inner_reference(inner_name, kw)
        k, alpha = kw['k'], kw['alpha']

        def init(x):
            return (x.copy(), inner_init(x))

        def step(x, state, g, lr, mu):
            slow, inner = state
            x, inner = inner_step(x, inner, g, lr, mu)
            if inner.t % k == 0:
                x, slow = ref.lookahead_sync(x, slow, alpha)
            return x, (slow, inner)
        return init, step
    return _inner_reference(case.optimizer, kw)


def _with_step_count(state, t):
    """Start the reference's step count at begin_num_update, as MXNet's count starts there."""
    if isinstance(state, tuple) and not hasattr(state, '_replace'):
        return (state[0], state[1]._replace(t=t))
    return state._replace(t=t)


def run_reference(case, weights, grads, round_weights=None, skip=None, with_states=False):
    """The NumPy reference in float64 on the same data. ``round_weights`` (e.g. to float16) is
    applied to the weights after every step, for weights stored in low precision. ``skip``:
    {array index: steps (from 1) at which that array is not updated at all} (its step count
    does not advance; the scheduler follows the global step, which the other arrays count).
    With ``with_states`` returns (weights, the arrays of each final state as the MXNet
    optimizer lays them out, see :func:`state_arrays`)."""
    init, step = reference_for(case)
    kw = case.kwargs
    begin = kw.get('begin_num_update', 0)
    out, states = [], []
    for i, x in enumerate(weights):
        x = np.array(x, dtype=np.float64)
        state = _with_step_count(init(x), begin)
        lr_mult = case.expected_lr_mult.get(i, 1.0)
        wd = kw.get('wd', 0.0) * case.expected_wd_mult.get(i, 1.0)
        for k, step_grads in enumerate(grads, start=1):
            if skip and k in skip.get(i, ()):
                continue
            lr = (case.lr_at(begin + k) if case.lr_at else kw['learning_rate']) * lr_mult
            mu = case.mu_at(k) if case.mu_at else kw.get('mu')
            g = ref.mxnet_gradient(np.asarray(step_grads[i], np.float64), x,
                                   kw.get('rescale_grad', 1.0), wd, kw.get('clip_gradient'))
            x, state = step(x, state, g, lr, mu)
            if round_weights is not None:
                x = round_weights(x)
        out.append(x)
        states.append(state_arrays(case, state))
    return (out, states) if with_states else out


def state_arrays(case, state):
    """The reference ``state``'s arrays in the order of the MXNet optimizer's state tuple."""
    if case.optimizer in ('ranger', 'lookahead'):
        slow, inner = state
        inner_name = 'radam' if case.optimizer == 'ranger' else case.kwargs['optimizer']
        return [slow] + _inner_state_arrays(inner_name, case.kwargs, inner)
    return _inner_state_arrays(case.optimizer, case.kwargs, state)


def _inner_state_arrays(name, kw, state):
    if name == 'arsg':
        return {'amsgrad': [state.m, state.v, state.vhat], 'adam': [state.m, state.v],
                'none': [state.m]}[kw.get('preconditioner', 'amsgrad')]
    return {'rsg': [state.m], 'amsgrad': [state.m, state.v, state.vhat],
            'radam': [state.m, state.v]}[name]


def flat_states(state):
    """The NDArrays of an MXNet state tuple, nested tuples flattened, the update counts and
    names that end namsg's states (int64, uint8) left out."""
    if isinstance(state, tuple):
        return [leaf for s in split_count(state)[0] for leaf in flat_states(s)]
    return [state] if isinstance(state, mx.nd.NDArray) else []


def assert_all_close(actual, expected, rtol, atol, what=''):
    for i, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol,
                                   err_msg='%s: array %d differs' % (what, i))
