"""Parameter-server training with real scheduler, server and worker processes on 127.0.0.1."""

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import namsg_dist
from namsg import reference as ref
import dist_worker

WORKER = [sys.executable, str(Path(__file__).with_name('dist_worker.py'))]
HP = dict(learning_rate=0.01, beta1=0.9, beta2=0.99, epsilon=1e-8, mu=0.1, wd=1e-3)
STEPS = 6


def _launch(tmp_path, kvstore, update_on_kvstore, steps=STEPS, optimizer='arsg', params=HP,
            workers=2, extra=None):
    env = dict(OUT=str(tmp_path), KVSTORE=kvstore, STEPS=str(steps), OPTIMIZER=optimizer,
               OPTIMIZER_PARAMS=json.dumps(params), UPDATE_ON_KVSTORE=str(int(update_on_kvstore)),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent),
                                           os.environ.get('PYTHONPATH', '')]),
               **(extra or {}))
    out = io.StringIO()
    status = namsg_dist.launch_local(WORKER, num_workers=workers, num_servers=1, timeout=120,
                                     env=env, out=out)
    assert status == 0, out.getvalue()[-3000:]
    return [np.load(tmp_path / ('rank%d.npz' % r)) for r in range(workers)], out.getvalue()


def _reference(workers, steps):
    """Algorithm 1 on the gradient summed over the workers' shards, rescaled by 1/batch."""
    w0, b0 = dist_worker.initial_weights()
    params = {'w': w0, 'b': b0}
    states = {k: ref.arsg_init(v, HP['epsilon']) for k, v in params.items()}
    shards = [dist_worker.shard(rank, steps) for rank in range(workers)]
    batch = dist_worker.BATCH
    for k in range(steps):
        grads = {'w': 0.0, 'b': 0.0}
        for x, y in shards:
            xb, yb = x[k * batch:(k + 1) * batch], y[k * batch:(k + 1) * batch]
            dpred = (xb @ params['w'].T + params['b'] - yb) / dist_worker.OUT_UNITS
            grads['w'] = grads['w'] + dpred.T @ xb
            grads['b'] = grads['b'] + dpred.sum(axis=0)
        for name in params:
            g = ref.mxnet_gradient(grads[name], params[name], 1.0 / batch, HP['wd'])
            params[name], states[name] = ref.arsg_step(
                params[name], states[name], g, HP['learning_rate'], HP['beta1'], HP['beta2'],
                HP['mu'], HP['epsilon'])
    return params['w'], params['b']


# The worker calls namsg.sync_initial_weights before its first step (see its docstring: without
# it MXNet 1.9.1 breaks update_on_kvstore=False in about one run in six).
@pytest.mark.parametrize('kvstore,update_on_kvstore,contexts', [
    ('dist_sync', True, 1), ('dist_sync', False, 1), ('dist_sync', False, 2),
    ('dist_device_sync', True, 2)])
def test_dist_sync_two_workers_match_the_reference(tmp_path, kvstore, update_on_kvstore,
                                                   contexts):
    """Two workers (with one or two contexts each) end with the reference's weights."""
    results, _ = _launch(tmp_path, kvstore, update_on_kvstore,
                         extra=dict(CONTEXTS=str(contexts)))
    expected_w, expected_b = _reference(2, STEPS)
    for r in results:
        assert int(r['num_workers']) == 2
        np.testing.assert_allclose(r['weight'], expected_w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r['bias'], expected_b, rtol=1e-5, atol=1e-6)


def test_dist_async_runs_and_converges(tmp_path):
    results, _ = _launch(tmp_path, 'dist_async', True, steps=150,
                         params=dict(HP, learning_rate=0.05), extra=dict(REUSE_BATCH='1'))
    for r in results:
        assert r['losses'][-5:].mean() < 0.05 * r['losses'][:5].mean()


def test_failing_worker_fails_the_job_and_ends_every_process(tmp_path):
    out = io.StringIO()
    status = namsg_dist.launch_local([sys.executable, '-c', 'import sys; sys.exit(3)'],
                                     num_workers=2, num_servers=1, timeout=60, out=out)
    assert status == 3


def test_job_over_its_time_is_ended(tmp_path):
    out = io.StringIO()
    status = namsg_dist.launch_local([sys.executable, '-c', 'import time; time.sleep(60)'],
                                     num_workers=1, num_servers=1, timeout=3, out=out)
    assert status == 124 and 'exceeded' in out.getvalue()


def test_launcher_refuses_a_job_without_servers():
    with pytest.raises(ValueError, match='server'):
        namsg_dist.launch_local(['true'], num_workers=1, num_servers=0)


def test_training_script_runs_as_a_two_worker_job(tmp_path):
    """reproduce_mnist.py through the launcher: rank 0 alone writes the log, which records the
    job's shape; each worker trained on half of every epoch (whole batches only)."""
    root = Path(__file__).resolve().parent.parent
    env = dict(PYTHONPATH=str(root), NAMSG_DATA_DIR='')     # the embedded sample
    out = io.StringIO()
    status = namsg_dist.launch_local(
        [sys.executable, str(root / 'scripts' / 'reproduce_mnist.py'), '--settings',
         'mnist_logreg', '--methods', 'ARSG', '--scale', '0.1', '--kvstore', 'dist_sync',
         '--log-dir', str(tmp_path / 'logs'), '--checkpoint-dir', str(tmp_path / 'ck'),
         '--no-progress'], num_workers=2, num_servers=1, timeout=180, env=env, out=out)
    assert status == 0, out.getvalue()[-3000:]
    from namsg.experiments.train import read_log
    header, records = read_log(tmp_path / 'logs' / 'mnist_logreg' / 'ARSG' / 'seed0.jsonl')
    assert header['workers'] == 2 and header['kvstore'] == 'dist_sync'
    assert [r['iteration'] for r in records] == [7, 14]     # 4,000 images / 2 / 256, whole
    assert records[-1]['val_acc'] > 0.5
    assert not (tmp_path / 'ck').exists()
