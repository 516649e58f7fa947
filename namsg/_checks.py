"""Argument checks shared by the optimizers: each raises ValueError naming the
parameter, the value given and the range that is allowed."""

import math
import numbers
import os

import numpy


def _a(value):
    """'a str', 'an int': the type of ``value`` with its article."""
    kind = type(value).__name__
    return ('an ' if kind[:1] in 'aeiou' else 'a ') + kind


def _require_number(name, value, allowed):
    """Refuse a ``value`` that is not a real number (a str, None, a bool), naming its type."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, numpy.bool_)):
        raise ValueError('%s=%r is %s, not a number: give a number %s'
                         % (name, value, _a(value), allowed))


def check_finite_above(name, value, low, low_open):
    """Accept a finite number >= ``low`` (> ``low`` if ``low_open``): weight decay, the
    gradient scale."""
    allowed = '%s %g' % ('>' if low_open else '>=', low)
    _require_number(name, value, allowed)
    if not math.isfinite(value) or value < low or (low_open and value == low):
        raise ValueError('%s=%r is out of range: it must be a finite number %s'
                         % (name, value, allowed))
    return float(value)


def check_clip_gradient(value):
    """Accept None or a number that is not nan (MXNet's convention: <= 0 turns clipping off,
    see :func:`clip_threshold`)."""
    if value is None:
        return None
    _require_number('clip_gradient', value, '(the threshold; <= 0 or None: no clipping)')
    if math.isnan(value):
        raise ValueError('clip_gradient=nan is not a threshold: give a number (<= 0 or None '
                         'for no clipping)')
    return float(value)


def check_unit_interval(name, value):
    """Accept a number in [0, 1) (decay rates, the observation factor)."""
    _require_number(name, value, 'in [0, 1)')
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ValueError('%s=%r is out of range: it must be a number in [0, 1)' % (name, value))
    return float(value)


#: The range of ``epsilon``: float32's normal numbers. The states of float16 and float32 weights
#: are float32 and MXNet's operators take their scalars as float32, where a smaller epsilon is 0
#: (vhat or sqrt(v) + epsilon is then 0 for a zero gradient, whose update is 0/0 = NaN) or is
#: refused inside the update (``Out of range value for epsilon``), and a larger one is inf.
EPSILON_RANGE = (float(numpy.finfo(numpy.float32).tiny), float(numpy.finfo(numpy.float32).max))


def check_epsilon(value):
    """Accept an ``epsilon`` in :data:`EPSILON_RANGE`, [1.17549e-38, 3.40282e+38]."""
    return check_number_in('epsilon', value, *EPSILON_RANGE, False)


def check_learning_rate(value, scheduled):
    """Accept a finite number >= 0, or None when an lr_scheduler (``scheduled``) sets the step
    size. MXNet's Optimizer turns learning_rate=None without a scheduler into 0.01 before it is
    assigned; what reaches this check as None then is ``set_learning_rate(None)``."""
    if value is None and scheduled:
        return None
    if value is None:
        raise ValueError('learning_rate=None without an lr_scheduler: give a number >= 0 (None '
                         'is for an optimizer whose lr_scheduler sets the step size)')
    _require_number('learning_rate', value, '>= 0')
    if not math.isfinite(value) or value < 0.0:
        raise ValueError('learning_rate=%r is out of range: it must be a finite number >= 0 '
                         '(or None to take it from lr_scheduler)' % (value,))
    return float(value)


def check_bool(name, value):
    """Accept True or False (not any truthy value: lazy_update='no' would mean True)."""
    if not isinstance(value, (bool, numpy.bool_)):
        raise ValueError('%s=%r is %s: give True or False' % (name, value, _a(value)))
    return bool(value)


def check_integer_at_least(name, value, low):
    """Accept an integer >= ``low`` (Lookahead's k)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, numpy.bool_)) \
            or value < low:
        raise ValueError('%s=%r is out of range: it must be an integer >= %d' % (name, value, low))
    return int(value)


def check_number_in(name, value, low, high, low_open):
    """Accept a number in (low, high] (``low_open``) or [low, high] (high may be inf)."""
    bracket = '(' if low_open else '['
    allowed = 'in %s%g, %g]' % (bracket, low, high) if math.isfinite(high) else '>= %g' % low
    _require_number(name, value, allowed)
    if math.isnan(value) or value > high or value < low or (low_open and value == low):
        raise ValueError('%s=%r is out of range: it must be a number %s' % (name, value, allowed))
    return float(value)


def check_choice(name, value, choices):
    """Accept one of ``choices``."""
    if value not in choices:
        raise ValueError('%s=%r is unknown: choose one of %s'
                         % (name, value, ', '.join(repr(c) for c in choices)))
    return value


def check_bounds(lower_bound, upper_bound):
    """Accept None or finite numbers with lower_bound <= upper_bound."""
    for name, value in (('lower_bound', lower_bound), ('upper_bound', upper_bound)):
        if value is None:
            continue
        _require_number(name, value, 'or None (no bound)')
        if math.isnan(value):
            raise ValueError('%s=nan is not a bound: give a number or None (no bound)' % name)
    if lower_bound is not None and upper_bound is not None and lower_bound > upper_bound:
        raise ValueError('lower_bound=%r is above upper_bound=%r: the feasible box is empty'
                         % (lower_bound, upper_bound))
    return (None if lower_bound is None else float(lower_bound),
            None if upper_bound is None else float(upper_bound))


def check_floating_weight(dtype, optimizer, name='a weight'):
    """Accept a floating-point weight ``dtype`` (float16, float32, float64): the updates divide
    by a running second moment and scale by fractional rates, which integer arithmetic
    truncates to nothing or turns into a division by zero (SIGFPE)."""
    if not numpy.issubdtype(dtype, numpy.floating):
        raise ValueError('%s cannot update %s of dtype %s: floating point is required '
                         '(float16, float32 or float64); make the parameter floating point or '
                         'leave it out of the optimizer (grad_req=\'null\')'
                         % (optimizer, name, numpy.dtype(dtype).name))


#: The environment variable that sets how many parameters one ARSG update call takes.
AGGREGATION_ENV = 'NAMSG_AGGREGATION_SIZE'
DEFAULT_AGGREGATION = 128


def check_environment():
    """Check the environment variables that namsg's optimizers read when they are made
    (``$NAMSG_FUSED``, ``$NAMSG_AGGREGATION_SIZE``), so that a program can refuse a bad value
    before any work starts rather than at its first optimizer: the experiment scripts do this
    first. Returns None; raises ValueError naming the variable and the values it takes (the
    error the optimizers would raise)."""
    from . import kernels       # here: kernels imports this module
    kernels.fused_switch()
    aggregation_size()


def aggregation_size():
    """``$NAMSG_AGGREGATION_SIZE``: how many parameters of one dtype MXNet's Updater hands one
    of namsg's optimizers in one call (ARSG's fused update takes them in one pass; the
    states loaded for them are checked before any is updated); default 128 (unset or empty).
    0 or 1: one parameter per call. Raises ValueError naming the variable for anything but an
    integer >= 0, when the optimizer is made (not at its first update)."""
    text = os.environ.get(AGGREGATION_ENV, '').strip()
    if not text:
        return DEFAULT_AGGREGATION
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError('$%s=%r is not a number of parameters: set it to an integer >= 0 (how '
                         'many parameters one update call of namsg\'s optimizers takes; 0 or 1: '
                         'one at a time; default %d), or unset it'
                         % (AGGREGATION_ENV, text, DEFAULT_AGGREGATION))
    return value


def clip_threshold(clip_gradient):
    """MXNet's convention for ``clip_gradient``: None, 0 or a negative value turns clipping off
    (its update operators document "If clip_gradient <= 0, gradient clipping is turned off");
    a positive value is the threshold. Returns None (no clipping) or the threshold."""
    if clip_gradient is None or not clip_gradient > 0:
        return None
    return float(clip_gradient)


# -- the hyper-parameters of an optimizer class, checked on every assignment -----------------
# An optimizer class lists its checks in ``_CHECKS``, {attribute: check(optimizer, value) ->
# the value to store}; its __setattr__ applies them (see :func:`checked`), so the constructor
# and a later ``opt.beta1 = ...`` are held to the same rule.

def of_value(check, name, *args):
    """A _CHECKS entry that calls ``check(name, value, *args)`` and ignores the optimizer."""
    return lambda optimizer, value: check(name, value, *args)


def checked(optimizer, name, value):
    """``value`` as the check that ``optimizer``'s class lists for ``name`` returns it (or
    unchanged if none is listed). Raises ValueError for a value the check refuses."""
    check = getattr(type(optimizer), '_CHECKS', {}).get(name)
    return value if check is None else check(optimizer, value)


def _scheduled(optimizer):
    return optimizer.__dict__.get('lr_scheduler') is not None


#: What every optimizer of this package checks (MXNet's Optimizer assigns ``lr``).
BASE_CHECKS = {
    'lr': lambda optimizer, value: check_learning_rate(value, _scheduled(optimizer)),
    'lazy_update': of_value(check_bool, 'lazy_update'),
    'skip_nonfinite_grad': of_value(check_bool, 'skip_nonfinite_grad'),
    # MXNet's Optimizer assigns these too (Trainer.step sets rescale_grad at every step).
    'wd': of_value(check_finite_above, 'wd', 0.0, False),
    'rescale_grad': of_value(check_finite_above, 'rescale_grad', 0.0, True),
    'clip_gradient': lambda optimizer, value: check_clip_gradient(value),
}

#: The moments' decay rates and epsilon of the adaptive methods.
ADAPTIVE_CHECKS = dict(BASE_CHECKS,
                       beta1=of_value(check_unit_interval, 'beta1'),
                       beta2=of_value(check_unit_interval, 'beta2'),
                       epsilon=lambda optimizer, value: check_epsilon(value))
