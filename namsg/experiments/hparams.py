"""The paper's hyper-parameters (Table A1, the B.5 grids) and their translation to MXNet.

This is the one place where the paper's numbers live; scripts and tests read them from here.
Tuples are in the paper's notation (supplementary, Appendix B)::

    SGD (a, b)          heavy ball, eq. (1): m = b m + (1-b) g ; x -= a m
    ADAM, NADAM, AMSGRAD (a, b1, b2)
    RANGER (a, b1, b2, k, alpha_LA)
    RSG (a, b, mu)      ARSG (a, b1, b2, mu)      ARSGB (a, b1, b2, mu0)
"""

from typing import Dict, NamedTuple, Optional, Tuple

import mxnet as mx

from ..boost import STEP_SIZES as _STEP_SIZES_ARSG

#: The methods the paper compares, in the order of its tables.
METHODS = ('SGD', 'ADAM', 'NADAM', 'AMSGRAD', 'RANGER', 'RSG', 'ARSG', 'ARSGB')
#: The experiments of Appendix B (:data:`PROTOCOLS`), the columns of Table A1.
SETTINGS = ('mnist_logreg', 'mnist_cnn', 'cifar10_fast', 'cifar10_fine')

#: Table A1 of the supplementary: the hyper-parameters the paper selected, as {method:
#: {setting: the method's tuple}} (its fields: :data:`TUPLE_FIELDS`); drawn as a table in
#: :ref:`the hyper-parameters guide <paper-table-a1>`.
#:
#: :meta hide-value:
TABLE_A1: Dict[str, Dict[str, Tuple]] = {
    'SGD': {'mnist_logreg': (2.0, 0.99), 'mnist_cnn': (1.0, 0.9),
            'cifar10_fast': (0.1, 0.9), 'cifar10_fine': (0.5, 0.9)},
    'ADAM': {'mnist_logreg': (0.005, 0.999, 0.999), 'mnist_cnn': (0.0005, 0.9, 0.999),
             'cifar10_fast': (0.0005, 0.9, 0.99), 'cifar10_fine': (0.001, 0.9, 0.99)},
    'NADAM': {'mnist_logreg': (0.01, 0.999, 0.999), 'mnist_cnn': (0.0005, 0.9, 0.999),
              'cifar10_fast': (0.0005, 0.99, 0.999), 'cifar10_fine': (0.001, 0.9, 0.999)},
    'AMSGRAD': {'mnist_logreg': (0.005, 0.99, 0.999), 'mnist_cnn': (0.005, 0.9, 0.99),
                'cifar10_fast': (0.0005, 0.9, 0.99), 'cifar10_fine': (0.001, 0.9, 0.999)},
    'RANGER': {'mnist_logreg': (0.02, 0.99, 0.999, 5, 0.5),
               'mnist_cnn': (0.005, 0.9, 0.999, 5, 0.2),
               'cifar10_fast': (0.005, 0.99, 0.999, 5, 0.2),
               'cifar10_fine': (0.005, 0.9, 0.999, 5, 0.2)},
    'RSG': {'mnist_logreg': (5.0, 0.999, 0.1), 'mnist_cnn': (5.0, 0.999, 0.1),
            'cifar10_fast': (0.2, 0.999, 0.1), 'cifar10_fine': (1.0, 0.999, 0.1)},
    'ARSG': {'mnist_logreg': (0.05, 0.999, 0.99, 0.1), 'mnist_cnn': (0.01, 0.999, 0.99, 0.1),
             'cifar10_fast': (0.002, 0.999, 0.99, 0.1), 'cifar10_fine': (0.05, 0.999, 0.99, 0.1)},
    'ARSGB': {'mnist_logreg': (0.1, 0.999, 0.99, 0.05), 'mnist_cnn': (0.05, 0.999, 0.99, 0.05),
              'cifar10_fast': (0.005, 0.999, 0.99, 0.05),
              'cifar10_fine': (0.05, 0.999, 0.99, 0.05)},
}

#: B.3's reported best validation accuracy on CIFAR-10, fine mode, 80 epochs: (mean, std) over
#: 5 runs. The paper states no other result as a number (its other results are curves).
PAPER_BEST_VAL_ACC: Dict[str, Dict[str, Tuple[float, float]]] = {
    'cifar10_fine': {'SGD': (0.9151, 0.0021), 'ADAM': (0.9079, 0.0026),
                     'NADAM': (0.9080, 0.0022), 'AMSGRAD': (0.9045, 0.0013),
                     'RANGER': (0.9102, 0.0022), 'RSG': (0.9161, 0.0018),
                     'ARSG': (0.9157, 0.0019), 'ARSGB': (0.9196, 0.0014)},
}

#: epsilon of every adaptive method (B.1, B.3) ...
EPSILON = 1e-8
#: ... except ARSG and ARSGB in CIFAR-10's fine mode (B.3).
FINE_MODE_EPSILON = 1e-3

_STEP_SIZES_ADAPTIVE = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02)
#: B.5: the grids searched for each method (image classification), as {method: {field of its
#: tuple: the values tried}}; :func:`grid_tuples` lists a method's tuples.
#:
#: :meta hide-value:
GRIDS: Dict[str, Dict[str, Tuple]] = {
    'ADAM': {'a': _STEP_SIZES_ADAPTIVE, 'b1': (0.0, 0.9, 0.99, 0.999), 'b2': (0.99, 0.999)},
    'NADAM': {'a': _STEP_SIZES_ADAPTIVE, 'b1': (0.9, 0.99, 0.999), 'b2': (0.99, 0.999)},
    'AMSGRAD': {'a': _STEP_SIZES_ADAPTIVE, 'b1': (0.0, 0.9, 0.99, 0.999), 'b2': (0.99, 0.999)},
    'RANGER': {'a': _STEP_SIZES_ADAPTIVE + (0.05,), 'b1': (0.9, 0.95, 0.99, 0.999),
               'b2': (0.999,), 'k': (5,), 'alpha_LA': (0.2, 0.5, 0.8)},
    'SGD': {'a': (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0), 'b': (0.0, 0.9, 0.99, 0.999)},
    'RSG': {'a': (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0), 'b': (0.999,), 'mu': (0.1,)},
    'ARSG': {'a': _STEP_SIZES_ARSG, 'b1': (0.999,), 'b2': (0.99,), 'mu': (0.1,)},
    'ARSGB': {'a': _STEP_SIZES_ARSG, 'b1': (0.999,), 'b2': (0.99,), 'mu0': (0.05,)},
}


class OptimizerSpec(NamedTuple):
    """What to hand to MXNet: a registered optimizer name and its keyword arguments."""
    #: The paper's method, one of ``METHODS``.
    method: str
    #: The registered MXNet optimizer name (``'sgd'``, ``'arsg'``, ...).
    name: str
    #: Its keyword arguments, from the paper's tuple (the protocol adds ``wd`` and the
    #: step-size drop: :func:`optimizer_kwargs`).
    kwargs: Dict
    #: True for ARSGB, whose observation-boost policy the training loop applies.
    boost: bool = False


def to_mxnet(method, paper_tuple, epsilon=EPSILON):
    """Translate a paper tuple of ``method`` into MXNet optimizer arguments.

    SGD is heavy ball in the form of eq. (1), while MXNet's ``sgd`` keeps
    mom = momentum * mom - lr * g: the two agree with lr = a (1 - b), momentum = b while a is
    constant (supplementary B.4 equates lr 0.1 / momentum 0.9 with a = 1, b = 0.9). After a
    step-size drop eq. (1) rescales the stored momentum at once and MXNet's does not.
    """
    if method not in METHODS:
        raise ValueError('method=%r is unknown: choose one of %s' % (method, ', '.join(METHODS)))
    p = tuple(paper_tuple)
    if method == 'SGD':
        a, b = p
        return OptimizerSpec(method, 'sgd', dict(learning_rate=a * (1 - b), momentum=b))
    if method in ('ADAM', 'NADAM', 'AMSGRAD'):
        a, b1, b2 = p
        return OptimizerSpec(method, method.lower(), dict(learning_rate=a, beta1=b1, beta2=b2,
                                                          epsilon=epsilon))
    if method == 'RANGER':
        a, b1, b2, k, alpha = p
        return OptimizerSpec(method, 'ranger', dict(learning_rate=a, beta1=b1, beta2=b2,
                                                    epsilon=epsilon, k=k, alpha=alpha))
    if method == 'RSG':
        a, b, mu = p
        return OptimizerSpec(method, 'rsg', dict(learning_rate=a, beta=b, mu=mu))
    a, b1, b2, mu = p
    return OptimizerSpec(method, 'arsg', dict(learning_rate=a, beta1=b1, beta2=b2, mu=mu,
                                              epsilon=epsilon), boost=(method == 'ARSGB'))


def epsilon_for(method, setting):
    """B.5: 1e-8 for every adaptive method, 1e-3 for ARSG and ARSGB in CIFAR-10's fine mode."""
    if setting not in SETTINGS:
        raise ValueError('setting=%r is unknown: choose one of %s'
                         % (setting, ', '.join(SETTINGS)))
    fine = setting == 'cifar10_fine' and method in ('ARSG', 'ARSGB')
    return FINE_MODE_EPSILON if fine else EPSILON


def paper_optimizer(method, setting):
    """The MXNet optimizer of Table A1 for ``method`` in ``setting`` (one of SETTINGS)."""
    epsilon = epsilon_for(method, setting)
    return to_mxnet(method, TABLE_A1[method][setting], epsilon)


#: The order of each method's tuple, as named in GRIDS.
TUPLE_FIELDS = {'SGD': ('a', 'b'), 'ADAM': ('a', 'b1', 'b2'), 'NADAM': ('a', 'b1', 'b2'),
                'AMSGRAD': ('a', 'b1', 'b2'), 'RANGER': ('a', 'b1', 'b2', 'k', 'alpha_LA'),
                'RSG': ('a', 'b', 'mu'), 'ARSG': ('a', 'b1', 'b2', 'mu'),
                'ARSGB': ('a', 'b1', 'b2', 'mu0')}


#: How the settings are headed in tables.
SETTING_TITLES = {'mnist_logreg': 'MNIST logistic regression', 'mnist_cnn': 'MNIST CNN',
                  'cifar10_fast': 'CIFAR-10 fast', 'cifar10_fine': 'CIFAR-10 fine'}


def _number(value):
    return '%g' % value if isinstance(value, (int, float)) else repr(value)


def table_a1_markdown():
    """Table A1 as a Markdown table: a row per method, its tuple's fields (``TUPLE_FIELDS``),
    then its tuple in each setting (``TABLE_A1``). The docs draw their copy of the table with
    this (the ``table-a1`` directive), so it cannot drift from the numbers the scripts use."""
    lines = ['| method | tuple | %s |' % ' | '.join(SETTING_TITLES[s] for s in SETTINGS),
             '|---|---|' + '---|' * len(SETTINGS)]
    for method in METHODS:
        lines.append('| %s | (%s) | %s |' % (
            method, ', '.join(TUPLE_FIELDS[method]),
            ' | '.join('(%s)' % ', '.join(_number(v) for v in TABLE_A1[method][s])
                       for s in SETTINGS)))
    return '\n'.join(lines) + '\n'


def mxnet_arguments_markdown(setting):
    """What each method's Table A1 tuple in ``setting`` becomes (:func:`paper_optimizer`), as
    a Markdown table: the registered MXNet optimizer name and its keyword arguments, before the
    protocol adds its weight decay and step-size schedule (:func:`optimizer_kwargs`).

    Raises
    ------
    ValueError
        ``setting`` is not one of ``SETTINGS``.
    """
    lines = ['| method | MXNet optimizer | arguments |', '|---|---|---|']
    for method in METHODS:
        spec = paper_optimizer(method, setting)
        arguments = ', '.join('%s=%s' % (k, _number(v)) for k, v in spec.kwargs.items())
        lines.append("| %s | `'%s'` | `%s`%s |" % (
            method, spec.name, arguments,
            ' and the observation boost' if spec.boost else ''))
    return '\n'.join(lines) + '\n'


def grid_tuples(method):
    """Every paper tuple of B.5's grid for ``method``."""
    import itertools
    grid = GRIDS[method]
    return list(itertools.product(*(grid[field] for field in TUPLE_FIELDS[method])))


class Protocol(NamedTuple):
    """One experiment of Appendix B, as run here."""
    #: Its name, one of ``SETTINGS`` (its column of Table A1).
    setting: str
    #: The data, 'mnist' or 'cifar10'.
    dataset: str
    #: The network, one of :data:`namsg.experiments.models.MODELS`.
    model: str
    #: Epochs of training, >= 1.
    epochs: int
    #: Examples per minibatch of each worker, split over its devices (B.1, B.3: 256).
    batch_size: int
    #: Weight decay (L2, as MXNet's ``wd``).
    wd: float
    #: ARSGB's boost applies from the start of this epoch (1-based).
    boost_epoch: int
    #: The step size is divided by ``lr_drop_factor`` after this many iterations; None: never.
    lr_drop_iteration: Optional[int] = None
    #: What the step size is divided by after ``lr_drop_iteration`` (B.3: 10), > 0.
    lr_drop_factor: float = 10.0
    #: The budget, in (0, 1]: 1.0 is the paper's protocol, less is :meth:`scaled`'s.
    scale: float = 1.0

    def scaled(self, scale):
        """The protocol shrunk to ``scale`` of its epochs, keeping its shape: the boost epoch and
        the drop iteration move in proportion; everything else is unchanged."""
        if not 0 < scale <= 1:
            raise ValueError('scale=%r is out of range: it must be in (0, 1]' % (scale,))
        drop = self.lr_drop_iteration
        return self._replace(
            epochs=max(1, round(self.epochs * scale)),
            boost_epoch=max(1, round((self.boost_epoch - 1) * scale) + 1),
            lr_drop_iteration=None if drop is None else max(1, round(drop * scale)),
            scale=scale)


# MNIST: no weight decay is stated (B.1), so none is used. "Boosts at the 6th epoch" is read as
# "from the start of the 6th epoch" (five epochs at mu0), likewise 21st / 51st on CIFAR-10.
#: {setting: its Protocol}, for every setting of ``SETTINGS``.
#:
#: :meta hide-value:
PROTOCOLS: Dict[str, Protocol] = {
    'mnist_logreg': Protocol('mnist_logreg', 'mnist', 'logreg', epochs=20, batch_size=256,
                             wd=0.0, boost_epoch=6),
    'mnist_cnn': Protocol('mnist_cnn', 'mnist', 'mnist_cnn', epochs=10, batch_size=256, wd=0.0,
                          boost_epoch=6),
    'cifar10_fast': Protocol('cifar10_fast', 'cifar10', 'resnet20_b3', epochs=80,
                             batch_size=256, wd=1e-3, boost_epoch=21, lr_drop_iteration=12000),
    'cifar10_fine': Protocol('cifar10_fine', 'cifar10', 'resnet20_b3', epochs=80,
                             batch_size=256, wd=1e-3, boost_epoch=51, lr_drop_iteration=12000),
}


def optimizer_kwargs(protocol, method, overrides=None):
    """(spec, kwargs) of ``method``'s optimizer: Table A1's hyper-parameters (``overrides``
    replace some, e.g. in a grid search), the protocol's weight decay and its step-size drop."""
    spec = paper_optimizer(method, protocol.setting)
    kwargs = dict(spec.kwargs, **(overrides or {}))
    kwargs['wd'] = protocol.wd
    if protocol.lr_drop_iteration is not None:
        kwargs['lr_scheduler'] = mx.lr_scheduler.MultiFactorScheduler(
            step=[protocol.lr_drop_iteration], factor=1.0 / protocol.lr_drop_factor,
            base_lr=kwargs['learning_rate'])
    return spec, kwargs
