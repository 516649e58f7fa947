"""Where ARSG's step stands on the MXNet that runs this script: its fused and NDArray paths
against MXNet's own adam and sgd (momentum 0.9), all measured in one run, on the same arrays.

Measurements (--only):
  calls     operator calls per parameter and step, counted: every imperative operator
            invocation that one Updater call over the arrays makes (MXNet's generated
            operator functions all go through ndarray.register._imperative_invoke)
  resnet20  the optimizer step alone on ResNet-20's parameter set (a Trainer-style Updater
            call over all 65 trainable arrays, float32)
  large     the same on one 4096 x 4096 float32 array, with the byte floor: the bytes each
            step must read and write per value, and the time that takes at the speed of the
            fastest plain in-place pass (MXNet's a *= 1 and elemwise_add, numpy's multiply)
            over as many bytes as ARSG's step reads, timed in the same rounds as the steps
  train     trainer.step inside real Gluon training iterations of ResNet-20 (forward and
            backward finished before the step is timed; the whole iteration is shown too)
  dispatch  one fused ARSG call over ResNet-20's arrays against the same call over as many
            1-element arrays: how much of the call is dispatch rather than arithmetic, for
            each fused form

Timing: a round warms every optimizer up (--warmup steps), then times --repeats steps of
each, in turns (one step of each optimizer after the other, the order rotating), so that the
times compared are taken within moments of each other; a step's time is the median of its
round, and "vs adam" is the median over the rounds of each round's ratio, with the lowest and
highest round in brackets: ratios from one round share the machine's state, which makes them
comparable on a machine that other work shares. The first line says which fused form ARSG
takes: the direct call (every MXNet from 1.5.1), or the extension operator where that cannot
be had; where neither can be had (no compiler) the fused rows say why and the rest is
measured. Where MXNet has the extension operator (1.7 to 1.9) and the process takes the direct
call, the operator is measured too, as the row 'arsg operator'.
"""

import argparse
import contextlib
import os
import statistics
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.ndarray import register as _register

import namsg  # noqa: F401  (registers 'arsg')
from namsg import kernels

OPTIMIZERS = {
    'adam': ('adam', dict(learning_rate=0.001)),
    'sgd': ('sgd', dict(learning_rate=0.1, momentum=0.9)),
    'arsg fused': ('arsg', dict(learning_rate=0.01, fused=True)),
    'arsg ndarray': ('arsg', dict(learning_rate=0.01, fused=False)),
}
# Values read and written per parameter value by one float32 step, each 4 bytes: the weight
# and the gradient are read, the weight and every state array are read and written.
FORMS = {kernels.OPERATOR: 'the extension operator', kernels.DIRECT: 'the direct call'}
TRAFFIC = {'adam': (4, 3), 'sgd': (3, 2), 'arsg fused': (5, 4), 'arsg operator': (5, 4),
           'arsg ndarray': (5, 4)}
TRAFFIC_NOTE = {'adam': 'w g m v / w m v', 'sgd': 'w g mom / w mom',
                'arsg fused': 'w g m v vhat / w m v vhat', 'arsg operator': 'as arsg fused',
                'arsg ndarray': 'as arsg fused'}
# The fused form a row forces (the other rows take the process's).
FORM_OF_ROW = {'arsg operator': kernels.OPERATOR}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults appended to each flag's help; the description kept as written."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--rounds', type=int, default=5, help='rounds over all optimizers')
    parser.add_argument('--repeats', type=int, default=10, help='timed steps per optimizer '
                        'and round')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps of each '
                        'optimizer at the start of a round')
    parser.add_argument('--wd', type=float, default=1e-3, help='weight decay for every optimizer')
    parser.add_argument('--batch-size', type=int, default=64,
                        help='minibatch of the ResNet-20 training iterations (train)')
    parser.add_argument('--only', default='calls,resnet20,large',
                        help='comma-separated measurements: calls, resnet20, large, train, '
                             'dispatch')
    args = parser.parse_args(argv)
    unknown = set(args.only.split(',')) - {'calls', 'resnet20', 'large', 'train', 'dispatch'}
    if unknown:
        parser.error('--only: unknown measurement(s) %s' % ', '.join(sorted(unknown)))
    for name in ('rounds', 'repeats'):
        if getattr(args, name) < 1:
            parser.error('--%s must be at least 1' % name)
    if args.warmup < 0:
        parser.error('--warmup must be 0 or more')
    return args


def resnet20_shapes():
    """The shapes of ResNet-20's trainable parameters (B.3's network, the experiments' model)."""
    from namsg.experiments.models import resnet20
    net = resnet20()
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    return [p.shape for p in net.collect_params().values() if p.grad_req != 'null']


def available_optimizers():
    """The rows to measure, and why the fused one is missing where it is."""
    if kernels.load():
        rows = dict(OPTIMIZERS)
        if (kernels.fused_form() != kernels.OPERATOR and
                kernels.library.unavailable_reason() is None):
            kernels._mapped_form(kernels.OPERATOR)
            rows = dict(rows, **{'arsg operator': rows['arsg fused']})
        return rows, None
    rows = {k: v for k, v in OPTIMIZERS.items() if k != 'arsg fused'}
    return rows, kernels._state['error']


@contextlib.contextmanager
def fused_form_taken(form):
    """ARSG's fused path through ``form`` meanwhile (None: the process's own)."""
    saved = kernels._state['form']
    kernels._state['form'] = form or saved
    try:
        yield
    finally:
        kernels._state['form'] = saved


class Problem:
    """One optimizer's Updater over its own copy of the same weights and gradients."""

    def __init__(self, name, kwargs, weights, grads, wd, form=None):
        self.weights = [w.copy() for w in weights]
        self.grads = grads
        self.updater = mx.optimizer.get_updater(mx.optimizer.create(name, wd=wd, **kwargs))
        self.indices = list(range(len(weights)))
        self.form = form

    def step(self):
        with fused_form_taken(self.form):
            self.updater(self.indices, self.grads, self.weights)


def random_arrays(shapes, seed):
    rng = np.random.default_rng(seed)
    return [mx.nd.array(rng.normal(size=s), dtype='float32') for s in shapes]


def count_calls(problem):
    """Imperative operator invocations of one step (after a first one that makes the states)."""
    problem.step()
    mx.nd.waitall()
    calls = []
    original = _register._imperative_invoke

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)
    _register._imperative_invoke = counting
    try:
        problem.step()
    finally:
        _register._imperative_invoke = original
    mx.nd.waitall()
    return len(calls)


def time_steps(step, repeats, warmup):
    """Median seconds of ``step`` (waited for) over ``repeats`` calls after ``warmup``."""
    times = []
    for k in range(warmup + repeats):
        mx.nd.waitall()
        start = time.perf_counter()
        step()
        mx.nd.waitall()
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_rounds(steps, args):
    """{label: [median seconds per round]}. In a round every step is first warmed up, then the
    steps are timed in turns (one of each, in an order that rotates), so that the times
    compared were taken within moments of each other."""
    labels = list(steps)
    results = {label: [] for label in labels}
    for _ in range(args.rounds):
        for label in labels:
            for _ in range(args.warmup):
                steps[label]()
        times = {label: [] for label in labels}
        for k in range(args.repeats):
            for label in labels[k % len(labels):] + labels[:k % len(labels)]:
                mx.nd.waitall()
                start = time.perf_counter()
                steps[label]()
                mx.nd.waitall()
                times[label].append(time.perf_counter() - start)
        for label in labels:
            results[label].append(statistics.median(times[label]))
    return results


def ratio(results, label, base='adam'):
    """(median, lowest, highest) over the rounds of label's time / base's time."""
    ratios = [t / b for t, b in zip(results[label], results[base])]
    return statistics.median(ratios), min(ratios), max(ratios)


def report(title, results, missing, floors=None):
    print('\n%s' % title)
    print('  %-14s %10s %22s %10s%s' % ('optimizer', 'step (ms)', 'vs adam [range]', 'vs sgd',
                                        '  step / byte floor' if floors else ''))
    for label, times in results.items():
        median, low, high = ratio(results, label)
        line = '  %-14s %10.2f %8.2fx [%.2f-%.2f] %9.2fx' % (
            label, statistics.median(times) * 1e3, median, low, high,
            ratio(results, label, 'sgd')[0])
        if floors:
            line += '  %8.2fx' % statistics.median(t / f for t, f in zip(times, floors[label]))
        print(line)
    if missing:
        print('  %-14s not measured: %s' % ('arsg fused', missing))


def streaming_operations(size):
    """{label: (step, bytes moved)}: plain in-place passes over ``size`` float32 values, as the
    optimizers' steps are in place: MXNet's ``a *= 1`` and numpy's ``multiply(a, 1, out=a)``
    (4 bytes read and 4 written per value), MXNet's ``elemwise_add(a, z, out=a)`` (8 read, 4
    written). In place, because a copy into another array also reads the destination's cache
    lines before writing them (write-allocate): it moves more bytes than it is credited with."""
    a, z = mx.nd.ones(size), mx.nd.zeros(size)
    na = np.ones(size, np.float32)
    return {'mx a *= 1': (lambda: a.__imul__(1.0), 8 * size),
            'np multiply in place': (lambda: np.multiply(na, 1.0, out=na), 8 * size),
            'mx elemwise_add in place': (lambda: mx.nd.elemwise_add(a, z, out=a), 12 * size)}


def measure(title, shapes, rows, missing, args, floor=False):
    """Time ``rows`` on arrays of ``shapes`` and report; with ``floor``, time the streaming
    operations in the same rounds (in turns with the steps), and set each round's bandwidth to
    the fastest of them."""
    weights, grads = random_arrays(shapes, 0), random_arrays(shapes, 1)
    problems = {label: Problem(name, kw, weights, grads, args.wd, FORM_OF_ROW.get(label))
                for label, (name, kw) in rows.items()}
    steps = {label: p.step for label, p in problems.items()}
    values = sum(int(np.prod(s)) for s in shapes)
    # Over as many bytes as ARSG's step reads (weights, gradients, three states), so that as
    # much of it stays in the caches as of the steps' arrays: a pass over one array of this
    # size ran from the last-level cache here, three times as fast.
    streams = streaming_operations(values * TRAFFIC['arsg ndarray'][0]) if floor else {}
    results = time_rounds(dict(steps, **{label: op for label, (op, _) in streams.items()}),
                          args)
    floors = None
    if floor:
        # Per round: the bandwidth, each optimizer's floor (its bytes at that bandwidth).
        speeds = {label: [moved / t for t in results[label]]
                  for label, (_, moved) in streams.items()}
        bandwidth = [max(speed[r] for speed in speeds.values()) for r in range(args.rounds)]
        floors = {label: [values * 4 * sum(TRAFFIC[label]) / bw for bw in bandwidth]
                  for label in rows}
        print('\nbyte floor: the bytes a step must read and write, at the speed of the fastest '
              'plain in-place pass over as many bytes as ARSG reads, timed in the same rounds:')
        for label, speed in speeds.items():
            print('  %-26s %6.1f GB/s' % (label, statistics.median(speed) / 1e9))
        print('  %-14s %8s %-28s %12s' % ('optimizer', 'B/value', 'reads / writes',
                                          'floor (ms)'))
        for label in rows:
            reads, writes = TRAFFIC[label]
            print('  %-14s %8d %-28s %12.2f' % (label, 4 * (reads + writes),
                                                TRAFFIC_NOTE[label],
                                                statistics.median(floors[label]) * 1e3))
        for label in streams:
            del results[label]
    report(title, results, missing, floors)
    if floors:
        bound = statistics.median(f / t for f, t in zip(floors['arsg ndarray'],
                                                         results['adam']))
        print("  ARSG's byte floor is %.2fx adam's step here: no ARSG step can take less than "
              'that fraction of adam\'s (0.5x would need %.1f GB/s)'
              % (bound, values * 4 * sum(TRAFFIC['arsg ndarray']) /
                 (0.5 * statistics.median(results['adam'])) / 1e9))


def time_training(name, kwargs, args):
    """Median seconds of trainer.step, and of the whole iteration, for ResNet-20 on random
    CIFAR-sized data."""
    from namsg.experiments.models import resnet20
    mx.random.seed(0)
    net = resnet20()
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), name, dict(kwargs, wd=args.wd))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    x = mx.nd.random.normal(shape=(args.batch_size, 3, 28, 28))
    y = mx.nd.array(np.arange(args.batch_size) % 10)
    step_times, iteration_times = [], []
    for k in range(args.warmup + args.repeats * args.rounds):
        mx.nd.waitall()
        start = time.perf_counter()
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        mx.nd.waitall()
        step_start = time.perf_counter()
        trainer.step(args.batch_size)
        mx.nd.waitall()
        end = time.perf_counter()
        if k >= args.warmup:
            step_times.append(end - step_start)
            iteration_times.append(end - start)
    return statistics.median(step_times), statistics.median(iteration_times)


def time_fused_call(shapes, args):
    """Median seconds of one kernels.arsg_update call over arrays of ``shapes``."""
    weights = [mx.nd.ones(s) for s in shapes]
    grads = [mx.nd.ones(s) for s in shapes]
    states = [(mx.nd.zeros(s), mx.nd.zeros(s), mx.nd.ones(s)) for s in shapes]
    n = len(shapes)
    return time_steps(lambda: kernels.arsg_update(
        weights, grads, states, None, [0.01] * n, [args.wd] * n, [1.0] * n, beta1=0.999,
        beta2=0.99, epsilon=1e-8, mu=0.1, rescale_grad=1.0, clip_gradient=None,
        lower_bound=None, upper_bound=None, preconditioner_index=0),
        args.repeats * args.rounds, args.warmup)


def main(argv=None):
    args = parse_args(argv)
    rows, missing = available_optimizers()
    only = args.only.split(',')
    print('mxnet %s, %d cores, OMP_NUM_THREADS=%s; ARSG fused path: %s' % (
        mx.__version__, os.cpu_count(), os.environ.get('OMP_NUM_THREADS', 'unset'),
        FORMS[kernels.fused_form()] + ' (%s)' % kernels._state['path'].name
        if missing is None else 'none (%s)' % missing))
    print('%d rounds x %d timed steps per optimizer (after %d warm-up), optimizers interleaved'
          % (args.rounds, args.repeats, args.warmup))
    resnet_shapes = resnet20_shapes() if {'calls', 'resnet20', 'train', 'dispatch'} & set(
        only) else None
    resnet_title = 'ResNet-20 parameter set: %d arrays, %.2f M values' % (
        len(resnet_shapes), sum(int(np.prod(s)) for s in resnet_shapes) / 1e6) \
        if resnet_shapes else None
    large_title = 'one 4096 x 4096 float32 array (16.8 M values)'
    for what in only:
        if what == 'calls':
            print('\noperator calls per parameter and step (imperative invocations of one '
                  'Updater call, counted)')
            print('  %-14s %14s %12s' % ('optimizer', 'ResNet-20 set', '4096 x 4096'))
            for label, (name, kw) in rows.items():
                counts = []
                for shapes in (resnet_shapes, [(4096, 4096)]):
                    weights, grads = random_arrays(shapes, 0), random_arrays(shapes, 1)
                    counts.append(count_calls(Problem(name, kw, weights, grads, args.wd,
                                                      FORM_OF_ROW.get(label))) / len(shapes))
                print('  %-14s %14.2f %12.0f' % (label, counts[0], counts[1]))
        elif what == 'resnet20':
            measure(resnet_title, resnet_shapes, rows, missing, args)
        elif what == 'large':
            measure(large_title, [(4096, 4096)], rows, missing, args, floor=True)
        elif what == 'train':
            results = {}
            for label, (name, kw) in rows.items():
                with fused_form_taken(FORM_OF_ROW.get(label)):
                    results[label] = time_training(name, kw, args)
            base = results['adam'][0]
            print('\ntrainer.step inside ResNet-20 training iterations (batch %d)'
                  % args.batch_size)
            print('  %-14s %10s %10s %16s' % ('optimizer', 'step (ms)', 'vs adam',
                                              'iteration (ms)'))
            for label, (step, iteration) in results.items():
                print('  %-14s %10.2f %9.2fx %16.1f' % (label, step * 1e3, step / base,
                                                        iteration * 1e3))
        elif what == 'dispatch':
            if missing:
                print('\ndispatch: not measured: %s' % missing)
                continue
            for form in [kernels.fused_form()] + [FORM_OF_ROW[label] for label in rows
                                                  if label in FORM_OF_ROW]:
                with fused_form_taken(form):
                    full = time_fused_call(resnet_shapes, args)
                    tiny = time_fused_call([(1,)] * len(resnet_shapes), args)
                print("\none fused call (%s), %d arrays: %.2f ms on ResNet-20's arrays, %.2f ms "
                      'on 1-element arrays' % (FORMS[form], len(resnet_shapes), full * 1e3,
                                               tiny * 1e3))


if __name__ == '__main__':
    main()
