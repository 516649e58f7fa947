"""A worker of test_states_dist (started by namsg_dist.launch_local; not a test module).

Builds two dense layers named by $PREFIXES (comma-separated), the second of $UNITS outputs, and
an ARSG Trainer (fused as $FUSED says) on a dist_sync kvstore with update_on_kvstore=False,
loads the Trainer states in $STATES (written by the test, from another model) and trains
$STEPS steps. Writes $OUT/rank<r>.json: the warnings of load_states about other names (their
messages and categories) and each state's update count at the end. A load_states that raises ends the worker with status 1
(namsg's exit hooks).

With MODE=save it saves instead (:func:`save`): the model of prefixes first_/second_ on a
dist_sync kvstore updating as $UPDATE_ON_KVSTORE says (0 or 1), boosted after its first step,
trains $STEPS steps, and rank 0 calls ``Trainer.save_states('$OUT/trainer.states')``.
"""

import json
import os
import warnings

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import namsg
from namsg.boost import ObservationBoost


class TwoLayers(gluon.HybridBlock):
    def __init__(self, prefixes, units):
        super().__init__(prefix='')
        with self.name_scope():
            self.a = gluon.nn.Dense(4, in_units=4, prefix=prefixes[0])
            self.b = gluon.nn.Dense(units, in_units=4, prefix=prefixes[1])

    def hybrid_forward(self, F, x):
        return self.b(self.a(x))


def train(kv, net, trainer, boost_after=None):
    """$STEPS steps on this rank's batch, after sync_initial_weights; ObservationBoost (factor
    0.25) after step ``boost_after``."""
    namsg.sync_initial_weights(trainer, 4)
    x = mx.nd.array(np.random.default_rng(kv.rank).normal(size=(4, 4)))
    for step in range(1, int(os.environ['STEPS']) + 1):
        with autograd.record():
            loss = (net(x) ** 2).sum()
        loss.backward()
        trainer.step(4)
        if step == boost_after:
            ObservationBoost(trainer, factor=0.25).boost(step)


def main():
    kv = mx.kv.create('dist_sync')
    net = TwoLayers(os.environ['PREFIXES'].split(','), int(os.environ['UNITS']))
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), 'arsg', {'fused': os.environ['FUSED'] == '1'},
                            kvstore=kv, update_on_kvstore=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        trainer.load_states(os.environ['STATES'])
    train(kv, net, trainer)
    counts = [int(state[-1][0].asscalar()) for _, state in
              sorted(trainer._updaters[0].states.items())]
    with open(os.path.join(os.environ['OUT'], 'rank%d.json' % kv.rank), 'w') as f:
        json.dump({'warnings': [str(w.message) for w in caught
                                if 'of other names' in str(w.message)],
                   'categories': sorted({w.category.__name__ for w in caught
                                         if 'of other names' in str(w.message)}),
                   'counts': counts}, f)


def save():
    kv = mx.kv.create('dist_sync')
    net = TwoLayers(['first_', 'second_'], 4)
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), 'arsg', {'fused': os.environ['FUSED'] == '1',
                                                           'mu': 0.05},
                            kvstore=kv, update_on_kvstore=os.environ['UPDATE_ON_KVSTORE'] == '1')
    train(kv, net, trainer, boost_after=1)
    if kv.rank == 0:
        trainer.save_states(os.path.join(os.environ['OUT'], 'trainer.states'))


if __name__ == '__main__':
    save() if os.environ.get('MODE') == 'save' else main()
