"""What the element-wise optimizers of this package share: MXNet's gradient preprocessing,
float32 state for float16 weights, and the lazy update of row_sparse gradients.

A subclass writes ``_state_slots(weight)`` and ``_step(weight, g, state, lr, t)`` for dense
arrays; this base class turns them into MXNet's ``create_state`` / ``update``.
"""

import numpy

from mxnet import ndarray as nd
from mxnet.ndarray import NDArray
from mxnet.optimizer import Optimizer

from . import kvstore_sync
from ._checks import check_learning_rate


class ElementwiseOptimizer(Optimizer):
    """Base class: see the module docstring.

    Parameters (besides :class:`mxnet.optimizer.Optimizer`'s)
    ----------
    lazy_update : bool, default True
        For ``row_sparse`` gradients, update only the rows present in the gradient (weights and
        state), like MXNet's ``adam(lazy_update=True)``; if False the gradient is made dense.
    """

    def __init__(self, learning_rate=0.001, lazy_update=True, **kwargs):
        super().__init__(learning_rate=check_learning_rate(learning_rate), **kwargs)
        self.lazy_update = bool(lazy_update)

    def set_learning_rate(self, lr):
        check_learning_rate(lr)
        super().set_learning_rate(lr)

    # -- parameter servers (see namsg.kvstore_sync) -----------------------------------------
    def __setattr__(self, name, value):
        # Changes of lr, lr_scheduler and mu also reach the servers this optimizer runs on.
        kvstore_sync.set_setting(self, name, value, super().__setattr__)

    def __getstate__(self):
        # MXNet drops param_dict, and with it Gluon's lr_mult / wd_mult: carry them.
        return kvstore_sync.pickled_state(self, super().__getstate__())

    # -- what subclasses write -------------------------------------------------------------
    def _state_slots(self, weight, zeros):
        """The state tuple for ``weight``; ``zeros()`` makes one zero array of the state dtype
        on the weight's context."""
        raise NotImplementedError

    def _step(self, weight, g, state, lr, t):
        """Update dense ``weight`` and ``state`` in place from the preprocessed gradient ``g``
        (a fresh array the step may overwrite), at this parameter's step ``t``."""
        raise NotImplementedError

    # -- MXNet's interface -----------------------------------------------------------------
    def create_state(self, index, weight):
        # float16 cannot hold the small constants these methods use (epsilon = 1e-8 underflows
        # to 0): keep the state in float32 and compute in float32 (see update).
        dtype = numpy.float32 if weight.dtype == numpy.float16 else weight.dtype
        return self._state_slots(weight, lambda: nd.zeros(weight.shape, weight.context,
                                                          dtype=dtype))

    def update(self, index, weight, grad, state):
        assert isinstance(weight, NDArray) and isinstance(grad, NDArray)
        self._update_count(index)
        lr = self._get_lr(index)
        wd = self._get_wd(index)
        t = self._index_update_count[index]
        if weight.dtype == numpy.float16:
            # Plain float16 (no multi_precision): compute in float32 against the float32 state.
            weight32 = weight.astype(numpy.float32)
            self._update_dense_or_lazy(weight32, grad.astype(numpy.float32), state, lr, wd, t)
            nd.cast(weight32, dtype=numpy.float16, out=weight)
        else:
            self._update_dense_or_lazy(weight, grad, state, lr, wd, t)

    def _update_dense_or_lazy(self, weight, grad, state, lr, wd, t):
        if grad.stype == 'row_sparse' and self.lazy_update:
            rows = grad.indices
            if rows.shape[0] == 0:
                return
            weight_rows = nd.take(weight, rows)
            state_rows = tuple(nd.take(s, rows) for s in state)
            self._step(weight_rows, self._preprocess(grad.data, weight_rows, wd), state_rows,
                       lr, t)
            weight[rows] = weight_rows
            for s, s_rows in zip(state, state_rows):
                s[rows] = s_rows
        else:
            if grad.stype != 'default':
                grad = grad.tostype('default')
            self._step(weight, self._preprocess(grad, weight, wd), state, lr, t)

    def _preprocess(self, grad, weight, wd):
        """g = clip(rescale_grad * grad + wd * weight, clip_gradient), as MXNet's adam does."""
        g = grad * self.rescale_grad
        if wd:
            g += wd * weight
        if self.clip_gradient:
            nd.clip(g, -self.clip_gradient, self.clip_gradient, out=g)
        return g
