"""Trainer states loaded on the workers of a 2-worker dist_sync job (updates on the workers:
MXNet cannot save or load states that live on the servers), checked against the parameters
as in one process (test_states); and saved by rank 0 of such a job."""

import io
import json
import os
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import namsg_dist

WORKER = [sys.executable, str(Path(__file__).with_name('states_dist_worker.py'))]
sys.path.insert(0, str(Path(__file__).parent))
from states_dist_worker import TwoLayers  # noqa: E402


def _saved_states(tmp_path, fused, steps=3):
    """Trainer states of a model named first_/second_ after ``steps`` local steps."""
    net = TwoLayers(['first_', 'second_'], 4)
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), 'arsg', {'fused': fused})
    x = mx.nd.array(np.random.default_rng(0).normal(size=(4, 4)))
    for _ in range(steps):
        with autograd.record():
            loss = (net(x) ** 2).sum()
        loss.backward()
        trainer.step(4)
    path = tmp_path / 'trainer.states'
    trainer.save_states(str(path))
    return path


def _launch(tmp_path, fused, prefixes, units):
    env = dict(OUT=str(tmp_path), STATES=str(_saved_states(tmp_path, fused)),
               FUSED=str(int(fused)), PREFIXES=prefixes, UNITS=str(units), STEPS='2',
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent),
                                           os.environ.get('PYTHONPATH', '')]))
    out = io.StringIO()
    status = namsg_dist.launch_local(WORKER, num_workers=2, num_servers=1, timeout=120, env=env,
                                     out=out)
    return status, out.getvalue()


@pytest.mark.parametrize('fused', [False, True], ids=['ndarray', 'fused'])
def test_dist_workers_warn_of_states_loaded_onto_other_names_and_resume_their_counts(tmp_path,
                                                                                      fused):
    status, out = _launch(tmp_path, fused, 'in_,out_', 4)
    assert status == 0, out[-3000:]
    for rank in range(2):
        with open(tmp_path / ('rank%d.json' % rank)) as f:
            result = json.load(f)
        assert len(result['warnings']) == 1, result
        assert result['categories'] == ['StatesRenamedWarning']
        assert "'first_weight' -> 'in_weight'" in result['warnings'][0]
        assert result['counts'] == [5] * 4          # 3 saved + 2 here


@pytest.mark.parametrize('fused', [False, True], ids=['ndarray', 'fused'])
def test_dist_workers_refuse_states_of_another_shape(tmp_path, fused):
    status, out = _launch(tmp_path, fused, 'first_,wider_', 5)
    assert status == 1, out[-3000:]
    assert ("ValueError: optimizer states that do not fit the parameters they are loaded onto"
            in out), out[-3000:]
    assert "the state saved for 'second_weight' has arrays of shape (4, 4); parameter " \
           "'wider_weight'" in out, out[-3000:]


@pytest.mark.parametrize('fused', [False, True], ids=['ndarray', 'fused'])
@pytest.mark.parametrize('update_on_kvstore', [False, True], ids=['on_workers', 'on_servers'])
def test_rank_0_saves_the_states_only_when_the_workers_update(tmp_path, update_on_kvstore,
                                                               fused):
    """Updating on the workers (with sync_initial_weights), rank 0's Trainer.save_states writes
    the states, its boosted optimizer and the record of the boost: a Trainer loading them in
    one process goes on from the workers' counts and is not boosted again. Updating on the
    servers, MXNet refuses (what docs/troubleshooting.md quotes)."""
    env = dict(MODE='save', OUT=str(tmp_path), FUSED=str(int(fused)), STEPS='3',
               UPDATE_ON_KVSTORE=str(int(update_on_kvstore)),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent),
                                           os.environ.get('PYTHONPATH', '')]))
    out = io.StringIO()
    status = namsg_dist.launch_local(WORKER, num_workers=2, num_servers=1, timeout=120, env=env,
                                     out=out)
    if update_on_kvstore:
        assert status == 1, out.getvalue()[-3000:]
        assert 'AssertionError: Cannot save states for distributed training' in out.getvalue()
        assert not (tmp_path / 'trainer.states').exists()
        return
    assert status == 0, out.getvalue()[-3000:]
    from namsg.boost import ObservationBoost
    net = TwoLayers(['first_', 'second_'], 4)
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), 'arsg', {'fused': fused})
    trainer.load_states(str(tmp_path / 'trainer.states'))
    assert trainer.optimizer.mu == pytest.approx(0.1)
    assert [int(state[-1][0].asscalar()) for _, state in
            sorted(trainer._updaters[0].states.items())] == [3] * 4
    policy = ObservationBoost(trainer, boost_epochs=[1], auto=True, window=1)
    assert [policy.epoch_begin(epoch) for epoch in range(1, 4)] == [None] * 3
    assert [b['epoch'] for b in policy.boosts] == [1]
