"""The experiments' networks (supplementary B.1, B.3)."""

from mxnet.gluon import nn

#: The CIFAR-10 networks, the protocols' first: B.3's ResNet-20 as written, and GluonCV's
#: ``cifar_resnet20_v1``, which made the earlier CIFAR-10 logs (see :func:`gluoncv_resnet20`).
CIFAR10_MODELS = ('resnet20_b3', 'cifar_resnet20_v1')
#: The names :func:`build` takes: MNIST's logistic regression and CNN (B.1), then CIFAR10_MODELS.
MODELS = ('logreg', 'mnist_cnn') + CIFAR10_MODELS
#: Names that logs of earlier versions record for a model, by its name now: 'resnet20' was
#: GluonCV's ``cifar_resnet20_v1`` until B.3's network was built (logs/cifar10/ and
#: logs/cifar10-scale0.125/ record it so).
LOGGED_NAMES = {'resnet20': 'cifar_resnet20_v1'}


def logistic_regression(classes=10):
    """Multinomial logistic regression: one fully connected layer on the flattened image
    (softmax in the loss)."""
    net = nn.HybridSequential()
    net.add(nn.Dense(classes))
    return net


def mnist_cnn(classes=10):
    """B.1's CNN: conv 5x5 (20) + BN + 2x2 max-pool; conv 5x5 (50) + BN + 2x2 max-pool;
    fully connected 500 + BN + ReLU; fully connected 10 (softmax in the loss).

    As B.1 describes it, the convolutions have no activation of their own (max-pooling after BN
    is their non-linearity). Pooling stride 2 and unpadded convolutions are not stated: chosen
    as in LeNet (28 -> 24 -> 12 -> 8 -> 4).
    """
    net = nn.HybridSequential()
    net.add(nn.Conv2D(20, kernel_size=5), nn.BatchNorm(), nn.MaxPool2D(pool_size=2, strides=2),
            nn.Conv2D(50, kernel_size=5), nn.BatchNorm(), nn.MaxPool2D(pool_size=2, strides=2),
            nn.Dense(500), nn.BatchNorm(), nn.Activation('relu'),
            nn.Dense(classes))
    return net


#: Which parameters get weight decay in the CIFAR-10 runs. B.3 is silent; we decay every
#: parameter (BN's gamma/beta and the biases included), the default of gluon.Trainer and of
#: GluonCV's train_cifar10.py. MXNet's Module API would decay only ``*_weight`` and ``*_gamma``.
WEIGHT_DECAY_ON = 'all parameters'


def resnet20(classes=10):
    """B.3's ResNet-20 as written: a 3x3 conv with 16 filters, BN, ReLU; three stages of three
    basic blocks (two 3x3 convs each, BN right after every conv and before its ReLU, a shortcut
    around each pair) with 16, 32, 64 filters, the first conv of stages 2 and 3 with stride 2;
    global average pooling; one fully connected layer (softmax in the loss).

    The blocks are GluonCV's ``CIFARBasicBlockV1``. GluonCV's own ``cifar_resnet20_v1`` differs
    from B.3 in one place: no ReLU after the first conv+BN; the committed logs made with it say
    so (logs/README.md). Where B.3 is silent:

    - shortcut where the shape changes: a 1x1 stride-2 conv + BN (He et al.'s option B, as
      GluonCV), not the zero-padding option A of He et al.'s CIFAR network;
    - padding 1 in every 3x3 conv, so 28x28 training crops give feature maps 28, 14, 7 and
      32x32 validation images 32, 16, 8; convolutions have no bias (BN follows);
    - initialization: the training loop's ``mx.init.Xavier()`` (uniform, magnitude 3) for every
      weight, BN gamma 1 and beta 0;
    - weight decay: see ``WEIGHT_DECAY_ON``.
    """
    from gluoncv.model_zoo.cifarresnet import CIFARBasicBlockV1
    net = nn.HybridSequential()
    with net.name_scope():
        net.add(nn.Conv2D(16, kernel_size=3, padding=1, use_bias=False), nn.BatchNorm(),
                nn.Activation('relu'))
        in_channels = 16
        for stage, channels in enumerate((16, 32, 64)):
            for block in range(3):
                stride = 2 if stage > 0 and block == 0 else 1
                net.add(CIFARBasicBlockV1(channels, stride, downsample=channels != in_channels,
                                          in_channels=in_channels, prefix='stage%d_block%d_'
                                          % (stage + 1, block + 1)))
                in_channels = channels
        net.add(nn.GlobalAvgPool2D(), nn.Dense(classes, in_units=64))
    return net


def gluoncv_resnet20(classes=10):
    """GluonCV's ``cifar_resnet20_v1``: ``resnet20`` without the ReLU after the first conv+BN.
    The CIFAR-10 logs made before B.3's network was built used it (model 'resnet20' in their
    headers); kept so that they can be rerun."""
    from gluoncv.model_zoo import get_model
    return get_model('cifar_resnet20_v1', classes=classes)


def current_name(name):
    """The name a model has now (one of MODELS) for ``name`` as a log records it: a name of
    LOGGED_NAMES is mapped to the model it stood for; any other is returned unchanged."""
    return LOGGED_NAMES.get(name, name)


def build(name, classes=10):
    """The network ``name`` (one of MODELS, or a name of LOGGED_NAMES) for ``classes``
    classes, uninitialized. Raises ValueError for an unknown name."""
    name = current_name(name)
    builders = {'logreg': logistic_regression, 'mnist_cnn': mnist_cnn, 'resnet20_b3': resnet20,
                'cifar_resnet20_v1': gluoncv_resnet20}
    if name not in builders:
        raise ValueError('model %r is unknown: choose one of %s' % (name, ', '.join(MODELS)))
    return builders[name](classes)
