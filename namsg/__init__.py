"""namsg: ARSG (adaptive remote stochastic gradient) and its relatives for MXNet 1.x.

Importing the package registers its optimizers with MXNet, so ``'arsg'``, ``'rsg'`` and the
baselines the paper compares with (``'amsgrad'``, ``'radam'``, ``'lookahead'``, ``'ranger'``) work
wherever MXNet takes an optimizer name (``gluon.Trainer``, ``mx.optimizer.create``,
``Module.fit``).

namsg needs MXNet 1.5 to 1.9 and numpy, and installs neither MXNet nor the packages of the paper's
experiments (``pip install namsg[experiments]``). ARSG's fused update is a direct call into
MXNet's engine on every MXNet from 1.5.1 (on 1.7 to 1.9 an extension operator stands in where
that cannot be built or loaded); elsewhere ARSG takes the NDArray path (see
:mod:`namsg.kernels`).
"""

# First, so that without MXNet the one error is which MXNet to install.
from . import _mxnet  # noqa: F401
from .arsg import ARSG, Arsg, PRECONDITIONERS
from .rsg import RSG
from .amsgrad import AMSGrad
from .radam import RAdam
from .lookahead import Lookahead, Ranger
from .kvstore_sync import sync_initial_weights
from ._states import StatesRenamedWarning
from ._checks import check_environment
# The 'horovod' kvstore subclasses KVStoreBase, which MXNet has from 1.7 on; before that a
# Trainer takes no kvstore class of ours, and Horovod's own DistributedTrainer remains.
if _mxnet.has_kvstore_base():
    from . import horovod_store  # noqa: F401 (registers the 'horovod' kvstore; see its doc)

#: The package's version (PEP 440): setup.py reads it from here, and each run log's header
#: records it (``versions``).
__version__ = '0.2.0'

__all__ = ['ARSG', 'Arsg', 'RSG', 'PRECONDITIONERS', 'AMSGrad', 'RAdam', 'Lookahead', 'Ranger',
           'sync_initial_weights', 'StatesRenamedWarning', 'check_environment', '__version__']
