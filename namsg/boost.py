"""The observation-boost policy (OBSB), which turns ARSG into ARSGB (Section 3 of the paper).

Start with a small observation factor mu0 (0.05 by default) and the step size found by a short
grid search. When the loss flattens, *boost*: double mu and scale the step size by
tau*(2 mu) / tau*(mu), the ratio of the tau that minimizes the gain factor r_g before and after
(:func:`namsg.dynamics.boost_factor`; 0.248 for beta1 = 0.999, the paper's "roughly divided
by 4"). The eigenvalue that converges fastest stays where it was; smaller eigenvalues now
converge faster and the noise is damped by the smaller step.

Usage in a Gluon loop (epochs count from 1; the boost takes effect from the epoch it is due)::

    policy = ObservationBoost(trainer, boost_epochs=[6])
    for epoch in range(1, epochs + 1):
        policy.epoch_begin(epoch)
        ...train one epoch...
        policy.epoch_end(epoch, mean_training_loss)

It works with any optimizer that has ``mu`` and ``beta1`` (ARSG with any preconditioner, RSG).
"""

import math

from mxnet.lr_scheduler import LRScheduler

from . import dynamics

__all__ = ['ObservationBoost', 'ScaledScheduler']


class ScaledScheduler(LRScheduler):
    """``scale * inner(num_update)``: how a boost scales a step size that an ``lr_scheduler``
    controls (MXNet forbids ``set_learning_rate`` then), keeping the schedule's own drops."""

    def __init__(self, inner, scale):
        super().__init__(base_lr=inner.base_lr)
        self.inner = inner
        self.scale = float(scale)

    def __call__(self, num_update):
        return self.scale * self.inner(num_update)


class ObservationBoost:
    """OBSB for a training loop: boosts at given epochs, or when the loss flattens, or both.

    Parameters
    ----------
    target : gluon.Trainer or mxnet.optimizer.Optimizer
        Whose optimizer to boost. A Trainer is followed through ``load_states``, which replaces
        its optimizer object.
    boost_epochs : iterable of int, default ()
        1-based epochs from whose start the boost applies (the paper: 6 on MNIST, 21 or 51 on
        CIFAR-10).
    auto : bool, default False
        Also boost when the average convergence rate over the last ``window`` epochs,
        (log L_{e-window} - log L_e) / window for the mean training losses L, falls below
        ``threshold``. The paper describes this trigger in words only; this is one reading.
    window : int, default 3
        Epochs over which the convergence rate is averaged, >= 1.
    threshold : float, default 0.02
        Average per-epoch decrease of log(loss) below which the loss counts as flat, > 0.
    max_boosts : int, default 1
        Boosts at most this many times in all (mu must stay below 1).
    factor : float or None, default None
        Step-size factor per boost; None computes tau*(2 mu)/tau*(mu) from the optimizer's
        beta1 and mu at the time of the boost.
    """

    def __init__(self, target, boost_epochs=(), auto=False, window=3, threshold=0.02,
                 max_boosts=1, factor=None):
        self._target = target
        self.boost_epochs = sorted({int(e) for e in boost_epochs})
        if any(e < 1 for e in self.boost_epochs):
            raise ValueError('boost_epochs=%r: epochs count from 1' % (list(boost_epochs),))
        if int(window) < 1:
            raise ValueError('window=%r is out of range: it must be an integer >= 1' % (window,))
        if not threshold > 0:
            raise ValueError('threshold=%r is out of range: it must be > 0' % (threshold,))
        if int(max_boosts) < 0:
            raise ValueError('max_boosts=%r is out of range: it must be >= 0' % (max_boosts,))
        if factor is not None and not 0 < factor:
            raise ValueError('factor=%r is out of range: it must be > 0 (or None)' % (factor,))
        self.auto = bool(auto)
        self.window = int(window)
        self.threshold = float(threshold)
        self.max_boosts = int(max_boosts)
        self.factor = factor
        self.boosts = []          # one dict per boost done: see boost()
        self.losses = []          # (epoch, mean training loss) as reported to epoch_end
        self._auto_due = None     # the epoch an automatic boost is due at

    @property
    def optimizer(self):
        target = self._target
        return target.optimizer if hasattr(target, 'optimizer') else target

    # -- the training loop's calls ---------------------------------------------------------
    def epoch_begin(self, epoch):
        """Boost if one is due at ``epoch`` and none was done for it yet. Returns the boost's
        record or None."""
        if any(b['epoch'] == epoch for b in self.boosts) or len(self.boosts) >= self.max_boosts:
            return None
        if epoch in self.boost_epochs:
            return self.boost(epoch, 'epoch')
        if self._auto_due == epoch:
            return self.boost(epoch, 'flat loss')
        return None

    def epoch_end(self, epoch, loss):
        """Record the epoch's mean training loss; schedules an automatic boost for the next epoch
        when ``auto`` and the loss has flattened."""
        self.losses.append((int(epoch), float(loss)))
        if self.auto and self.is_flat():
            self._auto_due = int(epoch) + 1

    def is_flat(self):
        """Whether the last ``window`` epochs (all after the last boost) averaged a convergence
        rate below ``threshold``."""
        last_boost = self.boosts[-1]['epoch'] if self.boosts else 0
        recent = [loss for epoch, loss in self.losses if epoch >= last_boost]
        if len(recent) <= self.window or min(recent[-self.window - 1:]) <= 0:
            return False
        rate = (math.log(recent[-self.window - 1]) - math.log(recent[-1])) / self.window
        return rate < self.threshold

    # -- the boost itself ------------------------------------------------------------------
    def boost(self, epoch, trigger='manual'):
        """Double mu and scale the step size now. Returns the record appended to ``boosts``:
        epoch, trigger, old and new mu and learning rate, and the factor."""
        opt = self.optimizer
        old_mu = opt.mu
        if not 0 < 2 * old_mu < 1:
            raise ValueError('cannot boost mu=%r: 2 mu must lie in (0, 1); start from a smaller '
                             'mu or boost fewer times' % (old_mu,))
        factor = self.factor if self.factor is not None else \
            dynamics.boost_factor(opt.beta1, old_mu)
        old_lr = opt.learning_rate
        if opt.lr_scheduler is None:
            opt.set_learning_rate(old_lr * factor)
        elif isinstance(opt.lr_scheduler, ScaledScheduler):
            opt.lr_scheduler.scale *= factor
        else:
            opt.lr_scheduler = ScaledScheduler(opt.lr_scheduler, factor)
        opt.mu = 2 * old_mu
        record = dict(epoch=int(epoch), trigger=trigger, old_mu=old_mu, new_mu=opt.mu,
                      old_lr=old_lr, new_lr=opt.learning_rate, factor=factor)
        self.boosts.append(record)
        return record

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self):
        """JSON-serialisable state. The optimizer's own mu and step size are saved with the
        optimizer (``Trainer.save_states``); this records which boosts were done."""
        return dict(boosts=[dict(b) for b in self.boosts],
                    losses=[list(x) for x in self.losses], auto_due=self._auto_due)

    def load_state_dict(self, state):
        self.boosts = [dict(b) for b in state['boosts']]
        self.losses = [(int(e), float(v)) for e, v in state['losses']]
        self._auto_due = state.get('auto_due')
