"""Does the CIFAR-10 input pipeline keep ResNet-20 busy? Times training iterations fed by the
real pipeline (shuffle, random 28x28 crop or flip, normalisation, as the training loop does)
against iterations on one batch already in memory, in one run; prints both and the ratio."""

import argparse
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from namsg.experiments import data as datasets
from namsg.experiments.cli import HelpFormatter
from namsg.experiments.models import resnet20
from namsg.experiments.prepare import CIFAR_CROP, prepare_cifar10


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--data-dir', default=None,
                        help='CIFAR-10 in any of its layouts: %s (default: $%s)'
                        % (datasets.CIFAR_LAYOUTS, datasets.DATA_DIR_ENV))
    parser.add_argument('--batch-size', type=int, default=256, help='minibatch size')
    parser.add_argument('--iterations', type=int, default=20, help='timed iterations per mode')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def timed_iterations(net, trainer, batches, count, warmup, batch_size):
    """Seconds per iteration over ``count`` iterations after ``warmup``, fetching each batch
    inside the timed stretch; the engine is drained only at its ends, as in training (no
    per-batch synchronisation), so preparing the next batch may overlap the running one."""
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def iteration():
        x, y = next(batches)
        with autograd.record():
            loss = loss_fn(net(mx.nd.array(x) if isinstance(x, np.ndarray) else x),
                           mx.nd.array(y) if isinstance(y, np.ndarray) else y)
        loss.backward()
        trainer.step(batch_size)
    for _ in range(warmup):
        iteration()
    mx.nd.waitall()
    start = time.perf_counter()
    for _ in range(count):
        iteration()
    mx.nd.waitall()
    return (time.perf_counter() - start) / count


def main(argv=None):
    args = parse_args(argv)
    data_dir = datasets.data_dir_from(args.data_dir)
    if data_dir is None:
        raise SystemExit('error: give --data-dir (or $%s) with CIFAR-10 in one of its '
                         'layouts: %s' % (datasets.DATA_DIR_ENV, datasets.CIFAR_LAYOUTS))
    try:
        prepared = prepare_cifar10(datasets.load_cifar10(data_dir))
    except datasets.DataError as e:
        raise SystemExit('error: %s' % e)
    mx.random.seed(0)
    net = resnet20()
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), 'arsg', {'learning_rate': 0.01, 'wd': 1e-3})
    rng = np.random.default_rng(0)
    fixed_x = mx.nd.array(prepared.train_x[:args.batch_size, :, :CIFAR_CROP, :CIFAR_CROP])
    fixed_y = mx.nd.array(prepared.train_y[:args.batch_size])
    in_memory = iter(lambda: (fixed_x, fixed_y), None)
    pipeline = prepared.train_batches(args.batch_size, rng)
    memory_time = timed_iterations(net, trainer, in_memory, args.iterations, args.warmup,
                                   args.batch_size)
    pipeline_time = timed_iterations(net, trainer, pipeline, args.iterations, args.warmup,
                                     args.batch_size)
    print('ResNet-20, batch %d, mean over %d iterations:' % (args.batch_size, args.iterations))
    print('  data already in memory: %.1f ms' % (memory_time * 1e3))
    print('  input pipeline:         %.1f ms (%+.1f%% against data in memory)'
          % (pipeline_time * 1e3, 100 * (pipeline_time / memory_time - 1)))


if __name__ == '__main__':
    main()
