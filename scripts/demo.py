"""Train one small Gluon network with ARSG and with ADAM, side by side, and print the losses.

The data is a synthetic 10-class problem (a fixed random teacher network labels Gaussian
inputs), made here so the demo needs no download. The network is a 128-unit hidden layer and a
10-way output; each optimizer trains it from the same initial weights, and the mean training
loss of every epoch is printed for both. With the defaults it takes about 10 seconds on one
CPU core.
"""

import argparse
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import namsg  # noqa: F401  (registers 'arsg' and 'rsg')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=int, default=5,
                        help='epochs to train, >= 1 (default: 5)')
    parser.add_argument('--batch-size', type=int, default=256,
                        help='minibatch size, >= 1 (default: 256)')
    parser.add_argument('--samples', type=int, default=20000,
                        help='synthetic training samples, >= 1 (default: 20000)')
    parser.add_argument('--seed', type=int, default=0, help='random seed, >= 0 (default: 0)')
    args = parser.parse_args(argv)
    for flag, value, least in (('--epochs', args.epochs, 1), ('--batch-size', args.batch_size, 1),
                               ('--samples', args.samples, 1), ('--seed', args.seed, 0)):
        if value < least:
            parser.error('argument %s: must be an integer >= %d, got %d' % (flag, least, value))
    try:
        namsg.check_environment()      # $NAMSG_FUSED and the like, before any work starts
    except ValueError as e:
        parser.error(str(e))
    return args


def make_data(samples, seed, features=64, classes=10):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, features)).astype(np.float32)
    teacher = rng.normal(size=(features, classes)) / np.sqrt(features)
    y = np.argmax(np.tanh(x @ teacher) + 0.3 * rng.normal(size=(samples, classes)), axis=1)
    return x, y.astype(np.float32)


def train(optimizer, params, x, y, args):
    mx.random.seed(args.seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(128, activation='relu'), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), optimizer, params)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    data = gluon.data.DataLoader(gluon.data.ArrayDataset(x, y), batch_size=args.batch_size,
                                 shuffle=True)
    history = []
    for _ in range(args.epochs):
        total, count = 0.0, 0
        for xb, yb in data:
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(xb.shape[0])
            total += loss.sum().asscalar()
            count += xb.shape[0]
        history.append(total / count)
    return history


def main(argv=None):
    args = parse_args(argv)
    x, y = make_data(args.samples, args.seed)
    runs = {
        'arsg (lr 0.01, mu 0.1)': ('arsg', {'learning_rate': 0.01}),
        'adam (lr 0.001)': ('adam', {'learning_rate': 0.001}),
    }
    results = {}
    for label, (name, params) in runs.items():
        start = time.time()
        results[label] = train(name, params, x, y, args)
        print('%-24s trained %d epochs in %.1f s' % (label, args.epochs, time.time() - start))
    print('\nmean training loss per epoch (synthetic 10-class data, %d samples)' % args.samples)
    print('epoch  ' + '  '.join('%24s' % label for label in results))
    for epoch in range(args.epochs):
        print('%5d  ' % (epoch + 1) + '  '.join('%24.4f' % results[label][epoch]
                                               for label in results))


if __name__ == '__main__':
    main()
