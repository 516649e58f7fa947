"""Argument checks shared by the optimizers: each raises ValueError naming the
parameter, the value given and the range that is allowed."""

import math

import numpy


def check_unit_interval(name, value):
    """Accept ``value`` in [0, 1) (decay rates, the observation factor)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) \
            or not 0.0 <= value < 1.0:
        raise ValueError('%s=%r is out of range: it must be a number in [0, 1)' % (name, value))
    return float(value)


def check_positive(name, value):
    """Accept a finite ``value`` > 0 (epsilon)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or value <= 0.0:
        raise ValueError('%s=%r is out of range: it must be a finite number > 0' % (name, value))
    return float(value)


def check_learning_rate(value):
    """Accept None (the lr_scheduler decides) or a finite number >= 0."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or value < 0.0:
        raise ValueError('learning_rate=%r is out of range: it must be a finite number >= 0 '
                         '(or None to take it from lr_scheduler)' % (value,))
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
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or math.isnan(value)):
            raise ValueError('%s=%r is not a number: give a float or None (no bound)'
                             % (name, value))
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


def clip_threshold(clip_gradient):
    """MXNet's convention for ``clip_gradient``: None, 0 or a negative value turns clipping off
    (its update operators document "If clip_gradient <= 0, gradient clipping is turned off");
    a positive value is the threshold. Returns None (no clipping) or the threshold."""
    if clip_gradient is None or not clip_gradient > 0:
        return None
    return float(clip_gradient)
