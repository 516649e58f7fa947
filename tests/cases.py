"""The one table of optimizer configurations that drives the parity sweeps.

Every case names an MXNet optimizer, its full hyper-parameters (so the NumPy reference reads the
same numbers), and the MXNet protocol features it exercises. Reference hyper-parameters are read
from ``kwargs``; what MXNet derives (per-step lr, per-parameter multipliers) is written out here
independently of MXNet's own code.
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

# Clip thresholds and bounds below are exact in float32: MXNet's clip operator takes its bounds
# as float32 parameters, so 0.3 would become 0.30000001 even for float64 weights.

# Shared by every ARSG case unless a case overrides it: the paper's defaults with a step size
# small enough for 50 steps on O(1) gradients.
ARSG_BASE = dict(learning_rate=0.01, beta1=0.999, beta2=0.99, epsilon=1e-8, mu=0.1)
RSG_BASE = dict(learning_rate=0.05, beta=0.9, mu=0.2)
ADAPTIVE_BASE = dict(learning_rate=0.01, beta1=0.9, beta2=0.999, epsilon=1e-8)


@dataclass
class Case:
    id: str
    optimizer: str                       # MXNet registry name
    kwargs: Dict                         # every hyper-parameter, passed to mx.optimizer.create
    # lr at the optimizer's update count n (n starts at begin_num_update + 1), mirroring the
    # scheduler in kwargs; None means constant learning_rate.
    lr_at: Optional[Callable[[int], float]] = None
    mu_at: Optional[Callable[[int], float]] = None      # mu set before step k (k = 1, 2, ...)
    idx2name: Dict = field(default_factory=dict)
    lr_mult: Dict = field(default_factory=dict)
    wd_mult: Dict = field(default_factory=dict)
    # The per-index multipliers these settings mean, written out by hand (see MXNet's rules:
    # by index, then by name; wd_mult is 0 for names not ending in _weight or _gamma).
    expected_lr_mult: Dict = field(default_factory=dict)
    expected_wd_mult: Dict = field(default_factory=dict)

    @property
    def fusable(self):
        """Whether the optimizer has the fused path (ARSG, RSG, Lookahead around ARSG)."""
        return self.optimizer in ('arsg', 'rsg') or self.kwargs.get('optimizer') == 'arsg'

    def make_kwargs(self):
        kwargs = dict(self.kwargs)
        if 'lr_scheduler' in kwargs:
            kwargs['lr_scheduler'] = kwargs['lr_scheduler']()   # a fresh scheduler per run
        return kwargs


def _factor_scheduler():
    import mxnet as mx
    return mx.lr_scheduler.FactorScheduler(step=10, factor=0.5, base_lr=0.02)


def _arsg(id, lr_at=None, mu_at=None, **overrides):
    return Case(id, 'arsg', {**ARSG_BASE, **overrides}, lr_at=lr_at, mu_at=mu_at)


CASES = [
    _arsg('defaults'),
    _arsg('fine_mode', epsilon=1e-3),
    _arsg('wd', wd=0.01),
    _arsg('rescale_grad', rescale_grad=1.0 / 16),
    _arsg('clip_gradient', clip_gradient=0.25, rescale_grad=0.5, wd=0.01),
    _arsg('beta1_0_mu_0', beta1=0.0, mu=0.0),
    _arsg('adam_preconditioner', preconditioner='adam', beta1=0.9, beta2=0.999),
    _arsg('none_preconditioner', preconditioner='none', learning_rate=0.05),
    _arsg('projection', lower_bound=-0.375, upper_bound=0.4375),
    _arsg('lower_bound_only', lower_bound=0.0),
    # FactorScheduler halves lr once the update count exceeds 10, 20, ...
    _arsg('lr_scheduler', learning_rate=0.02, lr_scheduler=_factor_scheduler,
          lr_at=lambda n: 0.02 * 0.5 ** ((n - 1) // 10)),
    _arsg('begin_num_update_adam', preconditioner='adam', learning_rate=0.02,
          begin_num_update=25, lr_scheduler=_factor_scheduler,
          lr_at=lambda n: 0.02 * 0.5 ** ((n - 1) // 10)),
    _arsg('mu_changed_mid_run', mu=0.05, mu_at=lambda k: 0.05 if k <= 20 else 0.1),
    Case('multipliers', 'arsg', {**ARSG_BASE, 'wd': 0.05},
         idx2name={0: 'dense0_weight', 1: 'dense0_bias', 2: 'dense1_weight'},
         lr_mult={0: 0.5, 'dense1_weight': 2.0}, wd_mult={'dense1_weight': 3.0},
         expected_lr_mult={0: 0.5, 1: 1.0, 2: 2.0},
         expected_wd_mult={0: 1.0, 1: 0.0, 2: 3.0}),
    _arsg('everything', wd=0.01, rescale_grad=0.25, clip_gradient=0.5, epsilon=1e-3,
          lower_bound=-0.625, upper_bound=0.625, learning_rate=0.02, lr_scheduler=_factor_scheduler,
          lr_at=lambda n: 0.02 * 0.5 ** ((n - 1) // 10),
          mu_at=lambda k: 0.05 if k <= 25 else 0.1),
    Case('rsg', 'rsg', dict(RSG_BASE)),
    Case('rsg_wd_clip_bounds', 'rsg', {**RSG_BASE, 'wd': 0.01, 'clip_gradient': 0.5,
                                       'lower_bound': -0.5, 'upper_bound': 0.5}),
    Case('rsg_mu_changed', 'rsg', dict(RSG_BASE), mu_at=lambda k: 0.1 if k <= 20 else 0.3),
    # The baselines the paper compares with.
    Case('amsgrad', 'amsgrad', dict(ADAPTIVE_BASE)),
    Case('amsgrad_wd_clip_scheduler', 'amsgrad',
         {**ADAPTIVE_BASE, 'wd': 0.01, 'clip_gradient': 0.5, 'lr_scheduler': _factor_scheduler,
          'learning_rate': 0.02}, lr_at=lambda n: 0.02 * 0.5 ** ((n - 1) // 10)),
    # beta2 = 0.9 gives rho_inf = 19: the warm-up ends at t = 6 (threshold 5) or t = 5 (4).
    Case('radam', 'radam', {**ADAPTIVE_BASE, 'beta2': 0.9}),
    Case('radam_threshold_4_wd', 'radam', {**ADAPTIVE_BASE, 'beta2': 0.9,
                                          'rectify_threshold': 4.0, 'wd': 0.01}),
    Case('radam_beta2_0999', 'radam', dict(ADAPTIVE_BASE)),
    Case('ranger', 'ranger', {**ADAPTIVE_BASE, 'beta2': 0.9, 'k': 5, 'alpha': 0.5}),
    Case('ranger_wd_clip_k3', 'ranger', {**ADAPTIVE_BASE, 'beta2': 0.9, 'k': 3, 'alpha': 0.2,
                                         'wd': 0.01, 'clip_gradient': 0.5}),
    Case('lookahead_arsg', 'lookahead', {**ARSG_BASE, 'optimizer': 'arsg', 'k': 4,
                                         'alpha': 0.8}, mu_at=lambda k: 0.05 if k <= 20 else 0.1),
    Case('lookahead_arsg_begin_num_update', 'lookahead',
         {**ARSG_BASE, 'optimizer': 'arsg', 'k': 5, 'alpha': 0.5, 'begin_num_update': 3}),
    # MXNet's convention: clip_gradient <= 0 turns clipping off (gradients here exceed 1).
    _arsg('negative_clip_gradient', clip_gradient=-1.0, wd=0.01),
    Case('rsg_negative_clip_gradient', 'rsg', {**RSG_BASE, 'clip_gradient': -1.0}),
    Case('amsgrad_negative_clip_gradient', 'amsgrad', {**ADAPTIVE_BASE, 'clip_gradient': -1.0}),
    Case('radam_negative_clip_gradient', 'radam', {**ADAPTIVE_BASE, 'beta2': 0.9,
                                                  'clip_gradient': -0.5}),
    Case('ranger_negative_clip_gradient', 'ranger', {**ADAPTIVE_BASE, 'beta2': 0.9, 'k': 3,
                                                    'alpha': 0.5, 'clip_gradient': -1.0}),
]

CASES_BY_ID = {case.id: case for case in CASES}

# (case, fused) pairs: every case on the NDArray path, the fusable ones on the fused path too.
# fused=None means the optimizer has no such switch.
PATHS = [(case, False if case.fusable else None) for case in CASES] + \
    [(case, True) for case in CASES if case.fusable]


def path_id(case_id, fused):
    """'<case>-fused' or '<case>-ndarray', for test ids."""
    return '%s-%s' % (case_id, 'fused' if fused else 'ndarray')


PATH_IDS = [path_id(case.id, fused) for case, fused in PATHS]


# -- non-finite gradients ----------------------------------------------------------------------

NAN, INF = float('nan'), float('inf')


@dataclass(frozen=True)
class Poison:
    """Gradient elements replaced by NaN or an infinity: ``entries`` of (step k counted from 1,
    array index, flat element index, value)."""
    id: str
    entries: Tuple

    def apply(self, grads):
        """A copy of ``grads`` (one list of arrays per step) with the entries set."""
        grads = [[g.copy() for g in step] for step in grads]
        for k, array, element, value in self.entries:
            grads[k - 1][array].reshape(-1)[element] = value
        return grads

    def steps(self, array):
        """The steps at which ``array``'s gradient is poisoned."""
        return {k for k, a, _, _ in self.entries if a == array}


# Never every array at one step: the others carry MXNet's num_update (the scheduler's count).
POISONS = [
    Poison('nan', ((3, 0, 4, NAN),)),
    Poison('inf_then_minus_inf', ((2, 0, 1, INF), (5, 3, 7, -INF))),
    Poison('nan_and_inf_in_one_step', ((4, 0, 0, NAN), (4, 2, 0, INF), (6, 0, 3, -INF))),
]

# Each optimizer, and the settings that meet a non-finite value differently: weight decay (a NaN
# weight enters g), clipping (infinities become finite, NaN stays), bounds (clip the weight).
NONFINITE_CASE_IDS = ['defaults', 'wd', 'clip_gradient', 'projection', 'adam_preconditioner',
                      'none_preconditioner', 'everything', 'rsg', 'rsg_wd_clip_bounds', 'amsgrad',
                      'amsgrad_wd_clip_scheduler', 'radam', 'radam_threshold_4_wd', 'ranger',
                      'lookahead_arsg']

# (case, fused, poison): every case on the NDArray path, the fusable ones on the fused path too.
NONFINITE = [(CASES_BY_ID[c], fused, p) for c in NONFINITE_CASE_IDS for p in POISONS
             for fused in ([False, True] if CASES_BY_ID[c].fusable else [None])]
NONFINITE_IDS = ['%s-%s' % (path_id(case.id, fused), p.id) for case, fused, p in NONFINITE]
