"""The experiments' networks (supplementary B.1, B.3)."""

from mxnet.gluon import nn

MODELS = ('logreg', 'mnist_cnn', 'resnet20')


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


def resnet20(classes=10):
    """B.3's ResNet-20: GluonCV's ``cifar_resnet20_v1``. It matches B.3 (3x3 conv with 16
    filters; three stages of three basic blocks, two 3x3 convs each, with 16, 32, 64 filters;
    stride-2 convs subsample; BN after every conv, before ReLU; global average pooling; one
    fully connected layer). Where B.3 is silent it chooses: where the shape changes, the
    shortcut is a 1x1 stride-2 convolution with BN (He et al.'s option B, not the zero-padding
    option A of their CIFAR network); convolutions are padded by 1, so 28x28 training crops give
    feature maps of 28, 14, 7 and 32x32 validation images 32, 16, 8."""
    from gluoncv.model_zoo import get_model
    return get_model('cifar_resnet20_v1', classes=classes)


def build(name, classes=10):
    builders = {'logreg': logistic_regression, 'mnist_cnn': mnist_cnn, 'resnet20': resnet20}
    if name not in builders:
        raise ValueError('model %r is unknown: choose one of %s' % (name, ', '.join(MODELS)))
    return builders[name](classes)
