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
With updates on parameter servers the boost is sent to them (servers started by
``python -m namsg_dist``; elsewhere it raises RuntimeError): see :mod:`namsg.kvstore_sync`.

The boosts done are recorded on the optimizer they changed (:data:`RECORD`), so they travel
with its boosted mu and step size wherever MXNet pickles it (``Trainer.save_states`` /
``load_states``, ``pickle``), and a policy made later on that optimizer counts them: a run
resumed with a new policy is not boosted again.

The policy's first stage, the short step-size search with a small mu, is
:func:`search_step_size`.
"""

import itertools
import logging
import math
import random
import threading
from typing import Dict, List, NamedTuple, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.lr_scheduler import LRScheduler

from . import dynamics, kvstore_sync

logger = logging.getLogger(__name__)

__all__ = ['ObservationBoost', 'ScaledScheduler', 'search_step_size', 'StepSizeSearch',
           'STEP_SIZES', 'RECORD']

#: ARSG's step-size grid (supplementary B.5), the candidates :func:`search_step_size` tries.
STEP_SIZES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

#: The optimizer attribute in which :class:`ObservationBoost` records the boosts it made on that
#: optimizer: a list of the records :meth:`ObservationBoost.boost` returns, oldest first. An
#: optimizer that was never boosted, or was pickled before namsg recorded boosts there, has
#: none. It is plain data in the optimizer's ``__dict__`` (on Lookahead, its inner optimizer's,
#: where mu lives), so MXNet's pickling keeps it; it is not a setting sent to parameter servers.
RECORD = 'obsb_boosts'


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
    """OBSB for a training loop: boosts at given epochs, or when the loss flattens, or both;
    with neither (``boost_epochs`` empty, ``auto`` False) only when :meth:`boost` is called.

    Parameters
    ----------
    target : gluon.Trainer or mxnet.optimizer.Optimizer
        Whose optimizer to boost. A Trainer is followed through ``load_states``, which replaces
        its optimizer object.
    boost_epochs : iterable of int, optional
        1-based epochs from whose start the boost applies (the paper: 6 on MNIST, 21 or 51 on
        CIFAR-10); none by default.
    auto : bool, default False
        Also boost when the average convergence rate over the last ``window`` epochs,
        (log L_{e-window} - log L_e) / window for the mean training losses L, falls below
        ``threshold``. The paper describes this trigger in words only; this is one reading.
    window : int, default 3
        Epochs over which the convergence rate is averaged, >= 1.
    threshold : float, default 0.02
        Average per-epoch decrease of log(loss) below which the loss counts as flat, > 0.
    max_boosts : int, default 1
        Boosts at most this many times in all (mu must stay below 1), counting those already
        recorded on the optimizer.
    factor : float or None, default None
        Step-size factor per boost; None computes tau*(2 mu)/tau*(mu) from the optimizer's
        beta1 and mu at the time of the boost.

    Attributes
    ----------
    boosts : list of dict
        The boosts done on the optimizer, oldest first (the records :meth:`boost` returns):
        those recorded on it (:data:`RECORD`), which came with it from ``Trainer.load_states``
        or ``pickle`` when it was boosted before it was saved; for an optimizer that carries no
        record (saved before namsg kept one), those given to :meth:`load_state_dict`. A boost
        epoch already in it is not boosted again.
    losses : list of tuple
        (epoch, mean training loss) pairs as given to :meth:`epoch_end` or
        :meth:`load_state_dict`, for the ``auto`` trigger.

    Raises
    ------
    ValueError
        At construction, for arguments out of range and for an optimizer the policy could not
        boost when due: one without ``mu`` (ARSG with any preconditioner and RSG have it, MXNet's
        own optimizers and Ranger do not), or whose mu does not stay in (0, 1) through the
        boosts the policy can still make (``max_boosts`` with ``auto``, else at most one per
        entry of ``boost_epochs``, less those recorded on the optimizer): mu must lie in
        (0, 2**-boosts), e.g. (0, 0.5) for one boost.
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
        self._loaded = []         # boosts from load_state_dict, for an optimizer without RECORD
        self.losses = []          # (epoch, mean training loss) as reported to epoch_end
        self._auto_due = None     # the epoch an automatic boost is due at
        # A boost is due hours into training: refuse an optimizer it cannot boost now.
        done = self.boosts
        pending = [e for e in self.boost_epochs if e not in {b['epoch'] for b in done}]
        left = max(0, self.max_boosts - len(done))
        self._check_boostable(self.optimizer, left if self.auto else min(left, len(pending)))

    def _check_boostable(self, opt, boosts):
        """Raise ValueError unless ``opt`` can take ``boosts`` boosts in a row: it has the
        observation factor mu (and beta1 unless ``factor`` is given), and mu stays in (0, 1)
        when doubled that many times."""
        needed = ('mu',) if self.factor is not None else ('mu', 'beta1')
        missing = [name for name in needed if not hasattr(opt, name)]
        if missing:
            raise ValueError(
                'ObservationBoost cannot boost the optimizer %s: it has no %s. The boost doubles '
                'the observation factor mu of ARSG (any preconditioner) or RSG, e.g. '
                "gluon.Trainer(params, 'arsg', {'mu': 0.05})"
                % (type(opt).__name__, ' or '.join(missing)))
        if boosts < 1:
            return
        mu, limit = opt.mu, 0.5 ** boosts
        if not mu > 0:
            raise ValueError(
                'ObservationBoost cannot boost mu=%r: doubling it changes nothing; start from '
                'a small positive mu (OBSB starts from 0.05)' % (mu,))
        if not mu < limit:
            raise ValueError(
                'ObservationBoost cannot boost mu=%r %d time(s): each boost doubles mu, which '
                'must stay below 1, so mu must lie in (0, %g); start from a smaller mu (OBSB '
                'starts small, e.g. 0.05) or allow fewer boosts (max_boosts)'
                % (mu, boosts, limit))
        if self.factor is None:
            # The factors from the optimizer's beta1 (ValueError where the analysis has none).
            try:
                for boost in range(boosts):
                    dynamics.boost_factor(opt.beta1, mu * 2 ** boost)
            except ValueError as e:
                raise ValueError('ObservationBoost cannot compute the step-size factor of a boost '
                                 'from beta1=%r (%s): give the factor (factor=...)'
                                 % (opt.beta1, e)) from e

    @property
    def optimizer(self):
        target = self._target
        return target.optimizer if hasattr(target, 'optimizer') else target

    @property
    def boosts(self):
        # Read from the optimizer each time: Trainer.load_states replaces it by the one saved,
        # which carries the boosts that made its mu and step size.
        carried = getattr(self.optimizer, RECORD, None)
        return [dict(b) for b in (self._loaded if carried is None else carried)]

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
        """Double mu and scale the step size now, and record the boost on the optimizer
        (:data:`RECORD`, read back as ``boosts``). Returns the record: epoch, trigger, old and
        new mu and learning rate, and the factor."""
        opt = self.optimizer
        old_mu = opt.mu
        if not old_mu > 0:
            raise ValueError('cannot boost mu=%r: doubling it changes nothing; set a small '
                             'positive mu (OBSB starts from 0.05)' % (old_mu,))
        if not 2 * old_mu < 1:
            raise ValueError('cannot boost mu=%r: 2 mu must stay below 1; start from a smaller '
                             'mu or boost fewer times' % (old_mu,))
        factor = self.factor if self.factor is not None else \
            dynamics.boost_factor(opt.beta1, old_mu)
        # On parameter servers both changes are sent there; fail before either is made.
        kvstore_sync.check_servers(opt, 'the step size and mu (a boost)')
        old_lr = opt.learning_rate
        # Each change is an assignment to the optimizer, which forwards it to servers.
        if opt.lr_scheduler is None:
            opt.set_learning_rate(old_lr * factor)
        elif isinstance(opt.lr_scheduler, ScaledScheduler):
            opt.lr_scheduler = ScaledScheduler(opt.lr_scheduler.inner,
                                               opt.lr_scheduler.scale * factor)
        else:
            opt.lr_scheduler = ScaledScheduler(opt.lr_scheduler, factor)
        done = self.boosts
        opt.mu = 2 * old_mu
        record = dict(epoch=int(epoch), trigger=trigger, old_mu=old_mu, new_mu=opt.mu,
                      old_lr=old_lr, new_lr=opt.learning_rate, factor=factor)
        # With mu and the step size, on the optimizer: saved and loaded with them.
        setattr(opt, RECORD, done + [dict(record)])
        return record

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self):
        """JSON-serialisable state: the boosts done, the losses reported to :meth:`epoch_end`
        and the epoch an automatic boost is due at. The optimizer's mu and step size, and the
        record of its boosts (:data:`RECORD`), are saved with the optimizer
        (``Trainer.save_states``); the losses only here."""
        return dict(boosts=self.boosts, losses=[list(x) for x in self.losses],
                    auto_due=self._auto_due)

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned, on resuming a run.

        The ``auto`` trigger needs the losses of the epochs before the resume; the boosts done
        come with the optimizer (``Trainer.load_states`` restores the record) where it was saved
        with one. For an optimizer that carries none (saved before namsg recorded boosts on
        it), the boosts of ``state`` are taken, and recorded on it from here on.

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` returned, as is or through JSON: ``boosts`` (list of the
            records :meth:`boost` returns), ``losses`` (list of [epoch, loss]) and, optionally,
            ``auto_due`` (int or None).

        Raises
        ------
        ValueError
            The optimizer carries a record of other boosts than ``state`` (compared by epoch):
            the policy state and the optimizer states were saved at different points of the run.
            Nothing is changed.
        KeyError
            ``state`` lacks ``boosts`` or ``losses``.

        Examples
        --------
        >>> import json, namsg
        >>> from namsg.boost import ObservationBoost
        >>> first = ObservationBoost(namsg.ARSG(mu=0.05), boost_epochs=[2])
        >>> for epoch, loss in [(1, 1.0), (2, 0.8)]:
        ...     _ = first.epoch_begin(epoch)
        ...     first.epoch_end(epoch, loss)
        >>> saved = json.dumps(first.state_dict())
        >>> resumed = ObservationBoost(first.optimizer, boost_epochs=[2])
        >>> [b['epoch'] for b in resumed.boosts]       # carried by the optimizer
        [2]
        >>> resumed.load_state_dict(json.loads(saved))
        >>> resumed.losses
        [(1, 1.0), (2, 0.8)]
        """
        boosts = [dict(b) for b in state['boosts']]
        losses = [(int(e), float(v)) for e, v in state['losses']]
        opt = self.optimizer
        carried = getattr(opt, RECORD, None)
        if carried is not None and [b['epoch'] for b in carried] != [b['epoch'] for b in boosts]:
            raise ValueError(
                'ObservationBoost.load_state_dict: the policy state records boosts at epochs %s '
                'but the optimizer carries boosts at epochs %s: they were saved at different '
                'points of the run; load the policy state saved with these optimizer states'
                % ([b['epoch'] for b in boosts], [b['epoch'] for b in carried]))
        if carried is None:
            # Saved before the record existed: it travels with the optimizer from now on.
            setattr(opt, RECORD, [dict(b) for b in boosts])
        self._loaded = boosts
        self.losses = losses
        self._auto_due = state.get('auto_due')


# -- OBSB's first stage ------------------------------------------------------------------------

class StepSizeSearch(NamedTuple):
    """What :func:`search_step_size` found."""
    #: The chosen step size: the first of ``ranking``.
    best: float
    #: (step size, score) for every candidate, best first, where the score is the mean training
    #: loss over the last ``window`` iterations of the search (``inf`` for a run that diverged).
    ranking: List[Tuple[float, float]]
    #: {step size: its per-iteration mean minibatch losses}, in the order of the iterations.
    losses: Dict[float, List[float]]

    @property
    def at_edge(self):
        """Whether ``best`` is the smallest or the largest of several candidates: the best step
        size may then lie outside the grid."""
        grid = [a for a, _ in self.ranking]
        return len(grid) > 1 and self.best in (min(grid), max(grid))

    def __repr__(self):
        # The per-iteration losses would fill a screen: their shape only.
        return 'StepSizeSearch(best=%g, ranking=[%s], losses: %d step sizes x %d iterations)' % (
            self.best, ', '.join('(%g, %.4g)' % r for r in self.ranking), len(self.losses),
            max(map(len, self.losses.values()), default=0))


def search_step_size(net, batches, loss_fn, iterations, step_sizes=STEP_SIZES,
                     optimizer='arsg', optimizer_params=None, window=None, ctx=None,
                     seed=0):
    """OBSB's first stage (Section 3): train ``net`` for ``iterations`` minibatches with each
    candidate step size, from the same initial weights on the same minibatches, and pick the one
    with the lowest training loss at the end; the paper does this with a small mu before the
    observation boost. The caller then builds its own Trainer with ``result.best`` (or keeps the
    one it has).

    The search leaves everything it touches as it found it, so that training after it is the
    training that would have run without it:

    - the parameters (weights, ``row_sparse`` weights included, and auxiliary state such as
      BatchNorm's running statistics) and their gradient buffers;
    - a Trainer the caller made for ``net``: it stays attached to the parameters (the search
      trains with Trainers of its own, which the parameters forget afterwards), with its states
      and kvstore untouched;
    - the caller's random generators: MXNet's (on every context), NumPy's global one and
      Python's ``random``. The search runs in a thread of its own, and MXNet keeps one generator
      per context for each thread, so its Dropout masks, and the random augmentation of a loader
      it iterates, come from generators of its own seeded with ``seed``; NumPy's and Python's
      generators, which a shuffling DataLoader draws from, are saved and restored around it. The
      same ``mx.random.seed`` before the search therefore gives the same random numbers after it
      as without it, and different seeds different numbers.

    The one lasting change is to a network whose parameters still wait for deferred
    initialization (shapes not yet known): one forward pass on the first minibatch, in
    prediction mode (no Dropout draws, BatchNorm statistics unchanged) and in the caller's
    thread, initializes them, drawing from the caller's MXNet generator as the first forward
    pass of training would; they stay initialized. (In a network that draws random numbers
    between such layers, e.g. a ``Sequential`` with Dropout between ``Dense`` layers of unknown
    input size, training's first step would interleave those draws, so its numbers then differ
    from a run without the search; run one forward pass before the search to avoid that.)

    Example, with a Gluon DataLoader::

        from namsg.boost import search_step_size, ObservationBoost
        found = search_step_size(net, train_loader, gluon.loss.SoftmaxCrossEntropyLoss(),
                                 iterations=200, optimizer_params={'mu': 0.05})
        trainer = gluon.Trainer(net.collect_params(), 'arsg',
                                {'learning_rate': found.best, 'mu': 0.05})
        policy = ObservationBoost(trainer, auto=True)

    Parameters
    ----------
    net : gluon.Block
        Initialized (``net.initialize()``; deferred shapes are completed as described above).
        Dense and ``row_sparse`` weights (``gluon.contrib.nn.SparseEmbedding``), dense and
        ``row_sparse`` gradients.
    batches : iterable of tuple
        ``(data, label)`` minibatches of NDArrays or NumPy arrays, e.g. a
        ``gluon.data.DataLoader``. The first ``iterations`` minibatches are taken once (iterating
        again if it runs out) and replayed for every candidate, so all see the same data in the
        same order.
    loss_fn : callable
        ``loss_fn(output, label)`` -> per-example losses, e.g. a ``gluon.loss.Loss``.
    iterations : int
        Minibatches per candidate, >= 1: "a small portion" of the training.
    step_sizes : sequence of float, default STEP_SIZES
        Candidates, each > 0; the default is B.5's ARSG grid, 0.001 to 0.1.
    optimizer : str, default 'arsg'
        Any registered optimizer name.
    optimizer_params : dict, default {'mu': 0.05}
        Its other arguments (``learning_rate`` is set per candidate); the default is OBSB's
        small initial mu0.
    window : int or None, default None
        Iterations at the end over which the loss is averaged for the score, in
        [1, iterations]; None takes the last quarter (at least one).
    ctx : Context or list of Context, default None
        Where to compute; None takes the contexts of the network's parameters. A minibatch is
        split over several contexts as ``gluon.utils.split_and_load`` does; the search's
        Trainers then use ``kvstore='device'`` (``'local'`` on one context for ``row_sparse``
        weights, which MXNet updates on a kvstore).
    seed : int, default 0
        Seed of the search's own MXNet generators, set before each candidate so that Dropout
        and the like draw alike for all of them. The caller's generators are not touched.

    Returns
    -------
    StepSizeSearch
        ``best``, ``ranking`` (best first) and ``losses``. Ties go to the larger step size
        (as fast in loss, faster in progress); diverged candidates rank last. A best step size
        at either end of the grid is logged as a warning (``found.at_edge``): the grid may not
        hold the optimum.

    Raises
    ------
    ValueError
        For an empty or non-positive grid, ``iterations`` or ``window`` out of range, an
        optimizer that cannot be created with ``optimizer_params``, a ``loss_fn`` that is not
        callable or parameters never initialized (``net.initialize()`` not called), all before
        any batch is read; for ``batches`` that yield nothing, before any training.
    KeyboardInterrupt
        An interrupt stops the search after the minibatch in progress; everything above is
        restored first.
    """
    step_sizes = [float(a) for a in step_sizes]
    if not step_sizes or any(not a > 0 for a in step_sizes):
        raise ValueError('step_sizes=%r: give at least one step size, each > 0' % (step_sizes,))
    if int(iterations) < 1:
        raise ValueError('iterations=%r is out of range: it must be an integer >= 1'
                         % (iterations,))
    iterations = int(iterations)
    window = max(1, iterations // 4) if window is None else int(window)
    if not 1 <= window <= iterations:
        raise ValueError('window=%r is out of range: it must lie in [1, iterations=%d]'
                         % (window, iterations))
    if not callable(loss_fn):
        raise ValueError('loss_fn=%r is not callable: give loss_fn(output, label), e.g. '
                         'gluon.loss.SoftmaxCrossEntropyLoss()' % (loss_fn,))
    optimizer_params = dict({'mu': 0.05} if optimizer_params is None else optimizer_params)
    try:
        # The optimizer every candidate gets, made once here so that a wrong name or argument
        # is reported before any batch is read or any training is done.
        mx.optimizer.create(optimizer, **dict(optimizer_params, learning_rate=step_sizes[0]))
    except (TypeError, ValueError) as e:
        raise ValueError('search_step_size cannot create optimizer=%r with optimizer_params=%r: '
                         '%s. The default optimizer_params, {\'mu\': 0.05}, is for arsg and rsg; '
                         'give optimizer_params for another optimizer' % (optimizer,
                                                                           optimizer_params, e)) \
            from e
    params = net.collect_params()
    never = [name for name, p in params.items() if not _initialized(p) and not _deferred(p)]
    if never:
        raise ValueError('search_step_size needs an initialized network: %s %s not initialized; '
                         'call net.initialize() first' % (', '.join(never),
                                                          'is' if len(never) == 1 else 'are'))
    if ctx is None:
        ctx = next(iter(params.values())).list_ctx()
    contexts = ctx if isinstance(ctx, (list, tuple)) else [ctx]
    sparse = any(p._stype != 'default' for p in params.values())
    kvstore = 'device' if len(contexts) > 1 else 'local' if sparse else None

    stop = threading.Event()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    trainers = {name: p._trainer for name, p in params.items()}
    try:
        replay = _in_own_thread(stop, _take_batches, batches, iterations, seed)
        # A row_sparse weight is read through a Trainer's kvstore (even in a forward pass): one
        # for those that have none yet, initialized with the whole weight they still hold.
        unattached = [p for p in params.values() if p._stype != 'default' and p._trainer is None]
        if unattached:
            gluon.Trainer(unattached, 'sgd', kvstore='local')
        _finish_deferred_init(net, params, replay[0][0], contexts)
        snapshot = _Snapshot(params)
        try:
            losses = _in_own_thread(stop, _try_candidates, stop, snapshot, net, loss_fn, replay,
                                    contexts, step_sizes, optimizer, optimizer_params, kvstore,
                                    seed)
        finally:
            snapshot.restore()
    finally:
        # The caller's Trainers, not the search's: set_data and row_sparse reads go through it.
        _attach(params, trainers)
        random.setstate(python_state)
        np.random.set_state(numpy_state)

    def score(a):
        tail = losses[a][-window:]
        value = sum(tail) / len(tail)
        return value if math.isfinite(value) else math.inf

    ranking = sorted(((a, score(a)) for a in step_sizes), key=lambda r: (r[1], -r[0]))
    found = StepSizeSearch(ranking[0][0], ranking, losses)
    if found.at_edge:
        top = found.best == max(step_sizes)
        logger.warning('search_step_size: the best step size, %g, is the %s of the grid (%s): '
                       'a %s one may be better; extend step_sizes to check', found.best,
                       'largest' if top else 'smallest',
                       ', '.join('%g' % a for a in sorted(step_sizes)),
                       'larger' if top else 'smaller')
    return found


# Gluon's Parameter has no public test for "initialized" that does not raise, nor a public
# storage type, and which Trainer a parameter belongs to (which the search must restore) is
# held only by its private fields; they are the same from MXNet 1.5 to 1.9.
def _initialized(param):
    return param._data is not None


def _deferred(param):
    return bool(param._deferred_init)


def _in_own_thread(stop, fn, *args):
    """``fn(*args)`` in a new thread, returning its result or raising its exception here.

    MXNet's resource manager, which holds the random generators of every context, is
    per thread (``dmlc::ThreadLocalStore``), so the thread's draws and ``mx.random.seed`` calls
    leave the caller's generators as they were. On an interrupt while waiting, ``stop`` is set
    and the thread is waited for (``fn`` checks ``stop`` between minibatches) before the
    interrupt goes on, so that nothing trains while the caller restores the parameters."""
    outcome, done = {}, threading.Event()

    def run():
        try:
            outcome['result'] = fn(*args)
        except BaseException as e:          # re-raised in the caller's thread below
            outcome['error'] = e
        finally:
            done.set()

    threading.Thread(target=run, name='namsg-search_step_size', daemon=True).start()
    # Event.wait, not Thread.join: a join interrupted by Ctrl-C marks a running thread as
    # stopped on some Pythons (3.11), and the next join returns at once.
    try:
        done.wait()
    except BaseException:
        stop.set()
        done.wait()
        raise
    if 'error' in outcome:
        raise outcome['error']
    return outcome['result']


def _take_batches(batches, iterations, seed):
    """The first ``iterations`` minibatches, re-iterating ``batches`` when it runs out."""
    mx.random.seed(seed)    # this thread's generators, for a loader's random augmentation
    taken = []
    while len(taken) < iterations:
        before = len(taken)
        taken.extend(itertools.islice(iter(batches), iterations - len(taken)))
        if len(taken) == before:
            raise ValueError('batches yielded %s minibatches where iterations=%d were asked '
                             'for; pass a re-iterable (e.g. a DataLoader) or fewer iterations'
                             % (before or 'no', iterations))
    return [(mx.nd.array(x) if not isinstance(x, mx.nd.NDArray) else x,
             mx.nd.array(y) if not isinstance(y, mx.nd.NDArray) else y) for x, y in taken]


def _finish_deferred_init(net, params, x, contexts):
    """Give parameters waiting for their shapes their values, as the first forward pass of
    training would: in the caller's thread (its generator), in prediction mode (no Dropout
    draws, no BatchNorm statistics)."""
    if not any(_deferred(p) for p in params.values()):
        return
    first = gluon.utils.split_and_load(x, contexts, even_split=False)[0]
    with autograd.pause(train_mode=False):
        net(first)
    waiting = [name for name, p in params.items() if not _initialized(p)]
    if waiting:
        raise ValueError('search_step_size: %s still %s for deferred initialization after a '
                         'forward pass on the first minibatch (not used by the network?); '
                         'initialize %s explicitly' % (', '.join(waiting),
                                                       'waits' if len(waiting) == 1 else 'wait',
                                                       'it' if len(waiting) == 1 else 'them'))


class _Snapshot:
    """What each parameter holds (values and gradients), to restore after the search, and the
    values each candidate starts from.

    A ``row_sparse`` weight holds only the rows last pulled from its Trainer's kvstore, which
    holds the whole weight (MXNet updates row_sparse weights there): the candidates start from
    all its rows, pulled once here, and the rows it held are put back at the end. MXNet allows
    one Trainer per ``row_sparse`` parameter: each candidate starts with none."""

    def __init__(self, params):
        self.params = params
        self.found, self.start, self.grads = {}, {}, {}
        for name, p in params.items():
            if p._stype == 'default':
                self.found[name] = self.start[name] = [d.copy() for d in p.list_data()]
            else:
                self.found[name] = [d.copy() for d in p._data]
                rows = mx.nd.arange(p.shape[0], ctx=p.list_ctx()[0], dtype='int64')
                self.start[name] = [d.copy() for d in p.list_row_sparse_data(rows)]
            if p.grad_req != 'null':
                self.grads[name] = [g.copy() for g in p.list_grad()]

    def reset(self):
        """A candidate's starting point: every row of the saved values, zero gradients and no
        Trainer."""
        for name, p in self.params.items():
            _copy(self.start[name], p._data)
            if p.grad_req != 'null':
                p.zero_grad()
            p._set_trainer(None)

    def restore(self):
        """The values and gradients as they were when the snapshot was taken."""
        for name, p in self.params.items():
            _copy(self.found[name], p._data)
            if name in self.grads:
                _copy(self.grads[name], p.list_grad())


def _attach(params, trainers):
    """Give each parameter back the Trainer it had (``trainers`` by name)."""
    for name, p in params.items():
        p._set_trainer(None)       # for row_sparse ones, MXNet refuses a second Trainer
        p._set_trainer(trainers[name])


def _copy(sources, targets):
    for source, target in zip(sources, targets):
        source.copyto(target)


class _Stopped(Exception):
    """The caller was interrupted: stop training."""


def _try_candidates(stop, snapshot, net, loss_fn, replay, contexts, step_sizes, optimizer,
                    optimizer_params, kvstore, seed):
    """Per step size, the per-iteration mean losses of training from the snapshot; runs in the
    search's own thread (see :func:`_in_own_thread`)."""
    # Each step takes one minibatch's gradient, also where the caller accumulates them.
    accumulated = [p for p in snapshot.params.values() if p.grad_req == 'add']
    losses = {}
    for a in step_sizes:
        snapshot.reset()
        mx.random.seed(seed)
        trainer = gluon.Trainer(snapshot.params, optimizer,
                                dict(optimizer_params, learning_rate=a), kvstore=kvstore)
        losses[a] = []
        for x, y in replay:
            if stop.is_set():
                raise _Stopped()
            losses[a].append(_train_step(net, trainer, loss_fn, x, y, contexts))
            for p in accumulated:
                p.zero_grad()
    return losses


def _train_step(net, trainer, loss_fn, x, y, contexts):
    xs = gluon.utils.split_and_load(x, contexts, even_split=False)
    ys = gluon.utils.split_and_load(y, contexts, even_split=False)
    with autograd.record():
        losses = [loss_fn(net(xi), yi) for xi, yi in zip(xs, ys)]
    autograd.backward(losses)
    trainer.step(x.shape[0])
    return sum(float(l.sum().asscalar()) for l in losses) / x.shape[0]
