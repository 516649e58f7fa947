"""Step time of ARSG (fused and NDArray paths) against MXNet's adam, sgd (momentum 0.9) and nag,
measured in one run, with warm-up and medians; prints ratios against adam.

Four measurements:
  resnet20  the optimizer step alone on ResNet-20's parameter set (Trainer-style Updater call)
  large     the optimizer step alone on one 4096 x 4096 float32 array
  train     trainer.step inside real Gluon training iterations of ResNet-20 (forward and
            backward are finished before the step is timed; the whole iteration is shown too)
  dispatch  one fused ARSG call over ResNet-20's arrays against the same call over as many
            1-element arrays: how much of the call is dispatch rather than arithmetic
"""

import argparse
import os
import statistics
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import namsg  # noqa: F401  (registers 'arsg')
from namsg import kernels
from namsg.experiments.cli import HelpFormatter
from namsg.experiments.models import resnet20

OPTIMIZERS = {
    'adam': ('adam', dict(learning_rate=0.001)),
    'sgd': ('sgd', dict(learning_rate=0.1, momentum=0.9)),
    'nag': ('nag', dict(learning_rate=0.1, momentum=0.9)),
    'arsg fused': ('arsg', dict(learning_rate=0.01, fused=True)),
    'arsg ndarray': ('arsg', dict(learning_rate=0.01, fused=False)),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--repeats', type=int, default=30, help='timed steps per optimizer')
    parser.add_argument('--warmup', type=int, default=5, help='untimed steps first')
    parser.add_argument('--wd', type=float, default=1e-3, help='weight decay for every optimizer')
    parser.add_argument('--batch-size', type=int, default=64,
                        help='minibatch of the ResNet-20 training iterations')
    parser.add_argument('--only', default='resnet20,large,train,dispatch',
                        help='comma-separated measurements to run')
    return parser.parse_args(argv)


def resnet20_shapes():
    net = resnet20()
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    return [p.shape for p in net.collect_params().values() if p.grad_req != 'null']


def time_updater(name, kwargs, shapes, args):
    """Median seconds of one Updater call over all arrays (as gluon.Trainer makes it)."""
    rng = np.random.default_rng(0)
    weights = [mx.nd.array(rng.normal(size=s), dtype='float32') for s in shapes]
    grads = [mx.nd.array(rng.normal(size=s), dtype='float32') for s in shapes]
    updater = mx.optimizer.get_updater(mx.optimizer.create(name, wd=args.wd, **kwargs))
    indices = list(range(len(shapes)))
    times = []
    for k in range(args.warmup + args.repeats):
        mx.nd.waitall()
        start = time.perf_counter()
        updater(indices, grads, weights)
        mx.nd.waitall()
        if k >= args.warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), None


def time_training(name, kwargs, args):
    """Median seconds of trainer.step, and of the whole iteration, for ResNet-20 on random
    CIFAR-sized data."""
    mx.random.seed(0)
    net = resnet20()
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), name, dict(kwargs, wd=args.wd))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    x = mx.nd.random.normal(shape=(args.batch_size, 3, 28, 28))
    y = mx.nd.array(np.arange(args.batch_size) % 10)
    step_times, iteration_times = [], []
    for k in range(args.warmup + args.repeats):
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
    times = []
    for k in range(args.warmup + args.repeats):
        mx.nd.waitall()
        start = time.perf_counter()
        kernels.arsg_update(weights, grads, states, None, [0.01] * n, [args.wd] * n, [1.0] * n,
                            beta1=0.999, beta2=0.99, epsilon=1e-8, mu=0.1, rescale_grad=1.0,
                            clip_gradient=None, lower_bound=None, upper_bound=None,
                            preconditioner_index=0)
        mx.nd.waitall()
        if k >= args.warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(title, results):
    base = results['adam'][0]
    print('\n%s' % title)
    print('  %-14s %12s %10s %16s' % ('optimizer', 'step (ms)', 'vs adam', 'iteration (ms)'))
    for label, (step, iteration) in results.items():
        print('  %-14s %12.2f %9.2fx %16s' % (label, step * 1e3, step / base,
                                              '' if iteration is None else
                                              '%.1f' % (iteration * 1e3)))


def main(argv=None):
    args = parse_args(argv)
    if not kernels.load():
        raise SystemExit('error: the fused operator is not available: %s'
                         % kernels._state['error'])
    print('mxnet %s, %d cores, OMP_NUM_THREADS=%s; medians of %d steps after %d warm-up'
          % (mx.__version__, os.cpu_count(), os.environ.get('OMP_NUM_THREADS', 'unset'),
             args.repeats, args.warmup))
    only = set(args.only.split(','))
    if 'resnet20' in only:
        shapes = resnet20_shapes()
        report('ResNet-20 parameter set: %d arrays, %.2f M values'
               % (len(shapes), sum(int(np.prod(s)) for s in shapes) / 1e6),
               {label: time_updater(n, kw, shapes, args) for label, (n, kw) in
                OPTIMIZERS.items()})
    if 'large' in only:
        report('one 4096 x 4096 float32 array (16.8 M values)',
               {label: time_updater(n, kw, [(4096, 4096)], args) for label, (n, kw) in
                OPTIMIZERS.items()})
    if 'dispatch' in only:
        shapes = resnet20_shapes()
        full = time_fused_call(shapes, args)
        tiny = time_fused_call([(1,)] * len(shapes), args)
        print('\none fused call, %d arrays: %.2f ms on ResNet-20\'s arrays, %.2f ms on '
              '1-element arrays' % (len(shapes), full * 1e3, tiny * 1e3))
    if 'train' in only:
        report('trainer.step inside ResNet-20 training iterations (batch %d)' % args.batch_size,
               {label: time_training(n, kw, args) for label, (n, kw) in OPTIMIZERS.items()})


if __name__ == '__main__':
    main()
