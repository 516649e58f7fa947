"""The experiments' networks against the supplementary's descriptions (B.1, B.3)."""

import mxnet as mx
import pytest

from namsg.experiments import models


def _op_sequence(net, shape):
    import json
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros(shape))
    nodes = json.loads(net._cached_graph[1].tojson())['nodes']
    return [n['op'] for n in nodes if n['op'] != 'null']


def test_resnet20_is_b3_network():
    ops = _op_sequence(models.build('resnet20_b3'), (2, 3, 28, 28))
    convs = [i for i, op in enumerate(ops) if op == 'Convolution']
    # 19 3x3 convs of B.3 plus the two 1x1 shortcut convs where the shape changes.
    assert len(convs) == 21
    # BN right after every conv, the first included; ReLU after the first conv's BN.
    assert all(ops[i + 1] == 'BatchNorm' for i in convs)
    assert ops[:3] == ['Convolution', 'BatchNorm', 'Activation']
    # One ReLU after the first conv, one inside and one after each of the nine blocks.
    assert ops.count('Activation') == 1 + 2 * 9
    assert ops[-1] == 'FullyConnected' and 'Pooling' in ops[-3:]
    params = models.build('resnet20_b3').collect_params()
    params.initialize()
    assert not [name for name in params.keys() if 'conv' in name and name.endswith('bias')]


def test_gluoncv_network_lacks_only_the_first_relu():
    ours = _op_sequence(models.build('resnet20_b3'), (2, 3, 32, 32))
    theirs = _op_sequence(models.build('cifar_resnet20_v1'), (2, 3, 32, 32))
    assert ours[:3] == ['Convolution', 'BatchNorm', 'Activation']
    assert theirs[:3] == ['Convolution', 'BatchNorm', 'Convolution']
    assert ours[:2] + ours[3:] == theirs


@pytest.mark.parametrize('size, maps', [(28, (28, 14, 7)), (32, (32, 16, 8))])
def test_resnet20_feature_map_sizes(size, maps):
    net = models.build('resnet20_b3')
    net.initialize(mx.init.Xavier())
    x = mx.nd.zeros((1, 3, size, size))
    seen = []
    for layer in net:
        x = layer(x)
        if x.ndim == 4 and x.shape[2] > 1:     # up to global pooling
            seen.append(x.shape[2])
    assert sorted(set(seen), reverse=True) == list(maps)
    assert x.shape == (1, 10)


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match='resnet20_b3'):
        models.build('resnet21')
