"""The extension operator's call: ARSG's step as the MXNet operator ``_namsg_arsg_update``,
loaded into MXNet and pushed to its engine.

The operator (``arsg_update.cc``) is registered through MXNet's extension API and loaded with
``mx.library.load``: MXNet's engine runs it asynchronously, ordered by its inputs and outputs.
It stands in for the direct call on MXNet 1.7 to 1.9 where that cannot be built or loaded (a
warning says why). Its library is built by :mod:`namsg.kernels.library`.

MXNet 1.7 and 1.8 close extension libraries at exit in a loop that reads freed memory
(apache/mxnet#20411), which killed some processes after their work was done (SIGABRT or
SIGSEGV, exit status lost); the library built for them ends the process with its own exit
status when MXNet closes it (see the compatibility section of ``arsg_update.cc``).
"""

import mxnet as mx

from . import layouts as _layouts
from . import library as _library

OP_NAME = '_namsg_arsg_update'


def _load_library(path):
    """Load the operator's library at ``path`` into MXNet (under the cache's shared lock, see
    ``namsg.kernels.library._build_and_map``); its path."""
    from mxnet import library      # MXNet 1.5 has none
    library.load(str(path), verbose=False)
    return path


def _join(values):
    """Comma-separated; one value when all are equal (the operator broadcasts it), which keeps
    the attribute strings short in the common case."""
    first = values[0]
    if all(v == first for v in values):
        return repr(float(first))
    return ','.join(repr(float(v)) for v in values)


def operator_update(weights, grads, states, masters, lrs, wds, denominator_scales, *, beta1,
                    beta2, epsilon, mu, rescale_grad, clip_gradient, lower_bound, upper_bound,
                    preconditioner_index):
    """:func:`~namsg.kernels.arsg_update` through the extension operator (loaded by
    :func:`~namsg.kernels.load`), pushed to MXNet's engine."""
    if _library._mkldnn():
        _layouts._reorder_to_default(weights)
    inputs = []
    for j, (w, g, state) in enumerate(zip(weights, grads, states)):
        inputs += [w, g] + list(state)
        if masters is not None:
            inputs.append(masters[j])
    attrs = dict(num_weights=len(weights), num_states=len(states[0]),
                 multi_precision=int(masters is not None),
                 preconditioner=preconditioner_index, lrs=_join(lrs), wds=_join(wds),
                 denominator_scales=_join(denominator_scales), beta1=repr(beta1),
                 beta2=repr(beta2), epsilon=repr(epsilon), mu=repr(mu),
                 rescale_grad=repr(float(rescale_grad)),
                 clip_gradient=repr(float(clip_gradient) if clip_gradient else -1.0))
    if lower_bound is not None:
        attrs['lower_bound'] = repr(lower_bound)
    if upper_bound is not None:
        attrs['upper_bound'] = repr(upper_bound)
    getattr(mx.nd._internal, OP_NAME)(*inputs, out=list(weights), **attrs)
