"""namsg's optimizers on MXNet's parameter servers (``dist_*`` kvstores).

* :func:`sync_initial_weights`: a work-around for a race in MXNet 1.9.1's Gluon Trainer.
* Settings that change after the optimizer was sent to the servers. With updates on the
  servers (``update_on_kvstore=True``) a worker pickles its optimizer once, in
  ``KVStore.set_optimizer``; MXNet then forgets which object went where, so
  ``Trainer.set_learning_rate``, a new ``lr_scheduler`` or ``optimizer.mu = x`` change only the
  worker's copy, which computes nothing. namsg's optimizers notice when they are pickled for the
  servers and then forward each change of a setting (:func:`server_settings`: the step size, its
  scheduler, ``wd``, clipping, the gradient scale and the optimizer's hyper-parameters) to them
  as a command that ``python -m namsg_dist`` servers understand: they set the attribute on the
  optimizer they already run, keeping its states and update counts. Without such servers the
  change raises; so does a change of what shapes the servers' states (:data:`FIXED_ON_SERVERS`).
* Gluon's ``lr_mult`` / ``wd_mult`` live in the optimizer's ``param_dict``, which MXNet drops when
  it pickles an optimizer; namsg's optimizers carry them in ``lr_mult`` / ``wd_mult`` instead
  (``pickled_state``).
* A worker that raises or calls ``sys.exit(n)`` would wait forever in ps-lite's exit barrier for
  the other workers (which wait for it in push/pull): in a ``dist_*`` worker process
  (``DMLC_ROLE=worker``) importing namsg makes an uncaught exception end the process after its
  traceback, with status 1, and ``sys.exit(n)`` with status n
  (``namsg_dist.install_worker_exit_hooks``).
"""

import inspect
import os
import pickle
import sys
import threading

import mxnet as mx
from mxnet.kvstore import KVStore

__all__ = ['sync_initial_weights', 'SERVER_SETTINGS', 'FIXED_ON_SERVERS', 'server_settings',
           'ServerSettings']

#: Attributes of every optimizer that a worker forwards to the servers when they change after
#: the optimizer was sent there: the step size (``set_learning_rate`` sets ``lr``), its
#: scheduler, weight decay, clipping and the gradient scale. :func:`server_settings` adds each
#: optimizer's hyper-parameters.
SERVER_SETTINGS = ('lr', 'lr_scheduler', 'wd', 'clip_gradient', 'rescale_grad')

#: Attributes that decide the layout of the states the servers hold: once the optimizer runs on
#: servers, a worker refuses to change them (the servers' states could not follow).
FIXED_ON_SERVERS = ('preconditioner', 'multi_precision')

#: Set in every process of a job that ``python -m namsg_dist`` starts: its servers understand
#: :class:`ServerSettings`.
SERVERS_ENV = 'NAMSG_DIST_SERVERS'

_decoding = threading.local()


def sync_initial_weights(trainer, batch_size):
    """Call before the first ``trainer.step(batch_size)``: finish the Trainer's kvstore set-up (initial weights pushed by rank 0 and pulled by every
    worker) before the first gradient is pushed, and wait for every worker.

    With a ``dist_*`` kvstore and ``update_on_kvstore=False``, MXNet 1.9.1's Trainer pulls the
    initial weights and later pushes gradients under the same key, with nothing ordering the
    two: a worker whose weight pull is served after the gradients were merged starts from the
    merged gradient instead of the weights. Seen here with 2 workers in about one run in six,
    with MXNet's sgd as with ARSG; never in 10 runs with this call before the first step.
    Harmless (one barrier) in the other modes; a no-op without a distributed kvstore.
    ``batch_size`` is the one later steps use: with updates on the servers the optimizer is sent
    to them here, with its gradient scale fixed from then on. Parameters must be initialised
    (for deferred initialisation, after a first forward pass).
    """
    trainer._check_and_rescale_grad(trainer._scale / batch_size)
    trainer._init_kvstore()
    kvstore = trainer._kvstore
    if kvstore is None or 'dist' not in kvstore.type:
        return
    if trainer._params_to_init:
        trainer._init_params()
    mx.nd.waitall()
    kvstore._barrier()


# -- what a worker sends ------------------------------------------------------------------------

def pickled_state(optimizer, state):
    """``state`` (an optimizer's ``__getstate__`` dict) as namsg pickles it: Gluon's per-parameter
    multipliers folded into ``lr_mult`` / ``wd_mult`` under the parameter's index (the key the
    servers update) and the parameters' names into ``idx2name``, no link to the servers. Also
    records the servers when ``optimizer`` is being pickled by ``KVStore.set_optimizer`` for
    them."""
    state.pop('_servers', None)
    if 'param_dict' in optimizer.__dict__:
        state['lr_mult'], state['wd_mult'] = multipliers(optimizer)
        # The Parameters' names too, by index, for what the servers report by name
        # (skip_nonfinite_grad): the multipliers above are by index, which idx2name yields to.
        names = dict(state.get('idx2name') or {})
        names.update((index, param.name) for index, param in optimizer.param_dict.items())
        state['idx2name'] = names
    kvstore = _sending_kvstore(optimizer)
    if kvstore is not None:
        object.__setattr__(optimizer, '_servers', kvstore)
    return state


def multipliers(optimizer):
    """``(lr_mult, wd_mult)`` of ``optimizer`` with those of its ``param_dict`` (Gluon's
    Parameter.lr_mult / wd_mult, by parameter index) added; they take precedence, as in
    ``Optimizer._get_lrs``."""
    lr_mult, wd_mult = dict(optimizer.lr_mult), dict(optimizer.wd_mult)
    for index, param in optimizer.param_dict.items():
        lr_mult[index] = param.lr_mult
        wd_mult[index] = param.wd_mult
    return lr_mult, wd_mult


def _sending_kvstore(optimizer):
    # MXNet gives no hook when it sends an optimizer: the caller frames tell whether this pickling
    # is KVStore.set_optimizer's, for the servers (it pickles only on a dist worker), and of this
    # very object (not of an optimizer wrapped inside it, such as Lookahead's inner one). It
    # relies on MXNet's own function (its parameter names, self and optimizer, are those of
    # MXNet 1.5 to 1.9) running on this thread; a wrapper put around it (functools.wraps, as
    # profilers and loggers do) is seen through. A kvstore class whose set_optimizer pickles the
    # optimizer itself, without calling MXNet's, is not recognised: changes then stay local.
    code = inspect.unwrap(KVStore.set_optimizer).__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            if frame.f_locals.get('optimizer') is optimizer:
                return frame.f_locals['self']
            return None
        frame = frame.f_back
    return None


def server_settings(optimizer):
    """The names of ``optimizer``'s attributes whose changes reach the servers it runs on (a
    frozenset): :data:`SERVER_SETTINGS`, and its hyper-parameters. Those are the attributes its
    class checks (``_CHECKS``: beta1, epsilon, mu, ... for namsg's optimizers; k and alpha for
    Lookahead), or for an MXNet optimizer (inside Lookahead) the constructor's arguments that
    it stores under their own name (momentum, beta1, ...); Lookahead adds its inner
    optimizer's. :data:`FIXED_ON_SERVERS` are left out."""
    checks = getattr(type(optimizer), '_CHECKS', None)
    names = set(SERVER_SETTINGS)
    if checks is not None:
        names.update(checks)
    else:
        for cls in type(optimizer).__mro__:
            if cls is mx.optimizer.Optimizer:
                break
            if '__init__' in vars(cls):
                names.update(name for name in inspect.signature(cls.__init__).parameters
                             if name in optimizer.__dict__)
    inner = optimizer.__dict__.get('optimizer')
    if isinstance(inner, mx.optimizer.Optimizer):
        names.update(server_settings(inner))
    return frozenset(names.difference(FIXED_ON_SERVERS))


_MISSING = object()


def _same(old, new):
    return old is new or (type(old) is type(new) and old == new)


def set_setting(optimizer, name, value, setter):
    """``setter(name, value)``, and if ``optimizer`` runs on parameter servers, ``name`` is one of
    its :func:`server_settings` and ``value`` is new, the same change on the servers.

    Raises RuntimeError (before changing anything) when the servers cannot take the change: the
    job was not started by ``python -m namsg_dist``, or ``name`` is one of
    :data:`FIXED_ON_SERVERS`. Assigning the value an attribute already has is never refused nor
    sent (Trainer.step assigns ``rescale_grad`` at every step)."""
    kvstore = optimizer.__dict__.get('_servers')
    if kvstore is None or _same(getattr(optimizer, name, _MISSING), value):
        setter(name, value)
        return
    if name in FIXED_ON_SERVERS:
        raise RuntimeError(
            'cannot change %s of the %s optimizer that runs on the parameter servers of kvstore '
            '%r: the states the servers hold were made for %s=%r. Set it before the first step '
            '(before Trainer or Module sends the optimizer to the servers).'
            % (name, type(optimizer).__name__, kvstore.type, name, getattr(optimizer, name)))
    if name not in server_settings(optimizer):
        setter(name, value)
        return
    check_servers(optimizer, name)
    setter(name, value)
    # Steps already handed to the engine must be computed with the old value: wait until their
    # pulls are done (in dist_sync a pull is served after the step's update), then send.
    mx.nd.waitall()
    body = pickle.dumps(ServerSettings({name: getattr(optimizer, name)}), 0).decode('ascii')
    kvstore._send_command_to_servers(0, body)


def check_servers(optimizer, what):
    """Raise RuntimeError if ``optimizer`` runs on servers that cannot take a change of ``what``."""
    kvstore = optimizer.__dict__.get('_servers')
    if kvstore is not None and os.environ.get(SERVERS_ENV) != '1':
        raise RuntimeError(
            'cannot change %s of the %s optimizer that runs on the parameter servers of kvstore '
            '%r: the servers keep the optimizer they were sent, and only servers started by '
            '`python -m namsg_dist` can change it (this process lacks %s=1, which namsg_dist '
            'sets). Start the job with `python -m namsg_dist launch` (or every process with '
            '`python -m namsg_dist run -- CMD`), or train with update_on_kvstore=False.'
            % (what, type(optimizer).__name__, kvstore.type, SERVERS_ENV))


# -- what a server receives ---------------------------------------------------------------------

class ServerSettings:
    """A change of optimizer attributes, sent from a worker to every server with MXNet's server
    command 0 (the only one that reaches the Python controller; MXNet uses it to send a new
    optimizer, which would drop the states). ``settings``: dict attribute -> value."""

    def __init__(self, settings):
        self.settings = dict(settings)

    def __reduce__(self):
        return _unpickle_settings, (self.settings,)

    def apply(self, optimizer):
        """Set the attributes on the server's ``optimizer`` (its states and counts stay)."""
        takes = server_settings(optimizer)
        for name, value in self.settings.items():
            if name not in takes:
                raise ValueError('namsg server: %r is not a setting the servers take for %s (%s)'
                                 % (name, type(optimizer).__name__, ', '.join(sorted(takes))))
            setattr(optimizer, name, value)


def _unpickle_settings(settings):
    if not getattr(_decoding, 'active', False):
        # MXNet's own server controller would hand this to set_optimizer.
        raise RuntimeError('namsg: a worker sent an optimizer setting (%s) to a parameter server '
                           'that was not started by `python -m namsg_dist`; it keeps its old '
                           'optimizer' % ', '.join(sorted(settings)))
    return ServerSettings(settings)


def decode_command(body):
    """Unpickle a server command 0 body (``bytes``) as namsg's servers do: a
    :class:`ServerSettings` or an optimizer."""
    _decoding.active = True
    try:
        return pickle.loads(body)
    finally:
        _decoding.active = False


# -- failing workers ----------------------------------------------------------------------------

if os.environ.get('DMLC_ROLE') == 'worker':
    # An uncaught exception or sys.exit(n) ends the process instead of ps-lite's exit barrier.
    import namsg_dist
    namsg_dist.install_worker_exit_hooks()
