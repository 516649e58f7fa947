"""Two MXNet faults that no optimizer can fix, reproduced with ARSG (fused and NDArray path) and
MXNet's own Adam alike, and their work-around checked against a single-device reference
(issue 25). Each scenario runs in a process of its own (tests/workaround_worker.py).

1. AMP's dynamic loss scaling does not skip an overflowing step when the parameters are updated
   on the kvstore, which is MXNet's default with several devices (``kvstore='device'`` or
   ``'local'``): ``Trainer.step`` pushes the gradients and the kvstore updates the weights
   before AMP checks them for overflow, so one inf gradient turns every weight into NaN for
   good (MXNet 1.9.1 ``gluon.Trainer._update``; reported with several GPUs in
   apache/mxnet#17881, and GluonCV's scripts turn updates on the kvstore off under AMP,
   dmlc/gluon-cv#959). ``kvstore='local'`` is as broken as ``'device'``.
   Work-around: ``gluon.Trainer(..., update_on_kvstore=False)``: the gradients are summed over
   the devices first, AMP checks the sum, and the step is skipped as on one device.

2. ``trainer.step(batch_size, ignore_stale_grad=True)`` promises to skip the parameters whose
   gradient was not refreshed by the last backward (a block unused in this iteration); with
   updates on the kvstore (the default with several devices or a ``dist_*`` kvstore) every
   parameter is pushed and updated anyway, with its stale gradient: momentum-style optimizers
   move it on every step. Work-around: ``update_on_kvstore=False`` (on one machine and with
   ``dist_sync``): the gradients are still summed on the kvstore and each worker updates only
   the parameters with fresh gradients.
"""

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import namsg_dist

HERE = Path(__file__).resolve().parent
WORKER = HERE / 'workaround_worker.py'
ENV = dict(os.environ, OMP_NUM_THREADS='1',
           PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get('PYTHONPATH', '')]))
# (optimizer, fused): ARSG on both paths, MXNet's own Adam.
OPTIMIZERS = [('arsg', '1'), ('arsg', '0'), ('adam', '0')]
IDS = ['arsg-fused', 'arsg-ndarray', 'adam']


@functools.lru_cache(maxsize=None)
def run(scenario, optimizer, fused, kvstore, update_on_kvstore, copies=1):
    """The worker's results for one scenario in one process (cached: the references repeat)."""
    out = Path(tempfile.gettempdir()) / (
        'namsg-workaround-%d-%s' % (os.getpid(), '-'.join(
            map(str, (scenario, optimizer, fused, kvstore, update_on_kvstore, copies)))))
    result = subprocess.run([sys.executable, str(WORKER), scenario, optimizer, fused, kvstore,
                             update_on_kvstore, str(out), str(copies)],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    try:
        return json.loads(out.read_text())
    finally:
        out.unlink()


def run_job(tmp_path, scenario, optimizer, fused, update_on_kvstore, workers=2):
    """The scenario as a dist_sync job of ``workers`` workers: rank 0's results."""
    out = tmp_path / 'result'
    log = []

    class Out:
        def write(self, text):
            log.append(text)

        def flush(self):
            pass

    status = namsg_dist.launch_local(
        [sys.executable, str(WORKER), scenario, optimizer, fused, 'dist_sync', update_on_kvstore,
         str(out)], num_workers=workers, num_servers=1, timeout=300, env=ENV, out=Out())
    assert status == 0, ''.join(log)[-3000:]
    return json.loads((tmp_path / 'result.rank0').read_text())


# -- 1. AMP with updates on the kvstore ----------------------------------------------------------

@pytest.mark.parametrize('kvstore', ['device', 'local'])
@pytest.mark.parametrize('optimizer,fused', OPTIMIZERS, ids=IDS)
def test_amp_with_updates_on_the_kvstore_applies_an_overflowing_step(optimizer, fused, kvstore):
    """MXNet's fault, reproduced: two devices, MXNet's default updates on the kvstore, one
    overflowing step, and every weight is NaN (AMP should have skipped the step)."""
    result = run('amp', optimizer, fused, kvstore, 'default')
    assert result['update_on_kvstore'] is True
    assert np.isnan(result['after_overflow']).all()
    assert np.isnan(result['after_normal_step']).all()


@pytest.mark.parametrize('kvstore', ['device', 'local'])
@pytest.mark.parametrize('optimizer,fused', OPTIMIZERS, ids=IDS)
def test_amp_work_around_update_on_kvstore_false_skips_the_step_as_one_device_does(
        optimizer, fused, kvstore):
    """The work-around: update_on_kvstore=False. The overflowing step leaves the weights as they
    were, and the next step moves them exactly as on one device without a kvstore."""
    result = run('amp', optimizer, fused, kvstore, '0')
    reference = run('amp', optimizer, fused, 'none', 'default')
    assert result['update_on_kvstore'] is False
    assert result['after_overflow'] == result['initial'] == reference['after_overflow']
    assert result['after_normal_step'] != result['initial']
    np.testing.assert_array_equal(result['after_normal_step'], reference['after_normal_step'])


# -- 2. ignore_stale_grad with updates on the kvstore -------------------------------------------

@pytest.mark.parametrize('kvstore', ['device', 'local'])
@pytest.mark.parametrize('optimizer,fused', OPTIMIZERS, ids=IDS)
def test_updates_on_the_kvstore_move_parameters_whose_gradient_is_stale(optimizer, fused,
                                                                      kvstore):
    """MXNet's fault, reproduced: with ignore_stale_grad=True the block unused in the last two
    steps still moves (its stale gradient is applied again), where one device leaves it."""
    result = run('stale', optimizer, fused, kvstore, 'default')
    reference = run('stale', optimizer, fused, 'none', 'default')
    assert result['update_on_kvstore'] is True
    assert reference['unused_after'] == reference['unused_before']
    assert not np.allclose(result['unused_after'], result['unused_before'])


@pytest.mark.parametrize('kvstore', ['device', 'local'])
@pytest.mark.parametrize('optimizer,fused', OPTIMIZERS, ids=IDS)
def test_stale_gradient_work_around_update_on_kvstore_false(optimizer, fused, kvstore):
    """The work-around: update_on_kvstore=False. The unused block stays where it was and the
    used one ends where it does on one device."""
    result = run('stale', optimizer, fused, kvstore, '0')
    reference = run('stale', optimizer, fused, 'none', 'default')
    assert result['update_on_kvstore'] is False
    assert result['unused_after'] == result['unused_before']
    np.testing.assert_allclose(result['unused_after'], reference['unused_after'], rtol=1e-6)
    np.testing.assert_allclose(result['used_after'], reference['used_after'], rtol=1e-6)


@pytest.mark.parametrize('optimizer,fused', [('arsg', '0'), ('adam', '0')], ids=['arsg', 'adam'])
def test_stale_gradients_on_parameter_servers_and_the_work_around(tmp_path, optimizer, fused):
    """The same with a dist_sync job of two workers (each training on the minibatch; the
    reference trains on it twice over): the servers move the unused block; with
    update_on_kvstore=False it stays and the used block ends as the reference's."""
    reference = run('stale', optimizer, fused, 'none', 'default', 2)
    faulty = run_job(tmp_path, 'stale', optimizer, fused, 'default')
    assert faulty['update_on_kvstore'] is True
    assert not np.allclose(faulty['unused_after'], faulty['unused_before'])
    fixed = run_job(tmp_path, 'stale', optimizer, fused, '0')
    assert fixed['update_on_kvstore'] is False
    assert fixed['unused_after'] == fixed['unused_before']
    np.testing.assert_allclose(fixed['used_after'], reference['used_after'], rtol=1e-6)
