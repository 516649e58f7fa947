"""The experiment scripts on MXNet 1.5 and 1.6, which have no ``mxnet.kvstore.KVStoreBase`` and
whose stores have no ``is_capable``: namsg.experiments and every script import, ``--kvstore
horovod`` (namsg's Horovod store subclasses KVStoreBase) is refused before any work, and a store
object still updates in the store. On later releases the missing names are removed here, as
those two releases lack them; .ci/compat.sh runs this file on 1.5 to 1.8 themselves."""

import subprocess
import sys
from pathlib import Path

import mxnet as mx
import pytest

from namsg import _mxnet
from namsg.experiments import models, train
from namsg.experiments.hparams import PROTOCOLS

ROOT = Path(__file__).resolve().parent.parent
#: Run first in a fresh interpreter: the MXNet of 1.5 and 1.6 as far as namsg can tell.
WITHOUT_KVSTORE_BASE = '''
import mxnet.kvstore
if hasattr(mxnet.kvstore, 'KVStoreBase'):
    del mxnet.kvstore.KVStoreBase
'''


def _without_kvstore_base(code, cwd):
    """Run ``code`` in a fresh interpreter on an MXNet without KVStoreBase."""
    return subprocess.run([sys.executable, '-c', WITHOUT_KVSTORE_BASE + code],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_every_script_imports_and_horovod_is_refused_before_any_work(tmp_path):
    """``import namsg.experiments.cli`` (every script) raised ImportError: cannot import name
    'KVStoreBase', through namsg.horovod_store."""
    scripts = sorted(str(p) for p in (ROOT / 'scripts').glob('*.py'))
    result = _without_kvstore_base('''
import runpy, sys
import namsg.experiments.cli as cli
for script in %r:
    sys.argv = [script, '--help']
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as e:
        assert e.code in (0, None), (script, e.code)
print('horovod_store imported:', 'namsg.horovod_store' in sys.modules)
try:
    cli.main('mnist', ['--kvstore', 'horovod', '--settings', 'mnist_logreg'])
except SystemExit as e:
    print(e.code)
''' % scripts, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    *_, imported, refusal = result.stdout.strip().splitlines()
    assert imported == 'horovod_store imported: False'
    assert refusal == (
        "error: --kvstore horovod: namsg's horovod kvstore needs MXNet 1.7 or later "
        "(mxnet.kvstore.KVStoreBase) and this is MXNet %s: train on parameter servers with "
        "--kvstore dist_sync (started by python -m namsg_dist launch, "
        "docs/scaling/parameter-servers.md), or install MXNet 1.7 to 1.9 for Horovod "
        "(docs/scaling/horovod.md)" % mx.__version__)
    assert list(tmp_path.iterdir()) == []          # nothing loaded or written


def test_train_run_refuses_horovod_before_it_builds_anything(tmp_path, monkeypatch):
    if _mxnet.has_kvstore_base():
        monkeypatch.setattr(_mxnet, 'has_kvstore_base', lambda: False)
    monkeypatch.setattr(models, 'build', lambda *a: pytest.fail('network built'))
    with pytest.raises(ValueError, match=r"needs MXNet 1\.7 or later .* this is MXNet %s: "
                                         % mx.__version__):
        train.train_run(PROTOCOLS['mnist_logreg'], 'ARSG', 0, None, tmp_path / 'run.jsonl',
                        tmp_path / 'ck', kvstore='horovod')
    assert list(tmp_path.iterdir()) == []


def test_a_store_without_is_capable_runs_the_optimizer():
    """The Trainer of a dist_* run (a store object) asked ``kvstore.is_capable(
    mx.kv.KVStoreBase.OPTIMIZER)``: AttributeError on 1.5 and 1.6, whose stores have neither and
    all run an optimizer. There a step runs in a real store; on later releases, whose stores
    have both, a store of their kind is stood for by an object without them."""
    net = models.build('logreg')
    net.initialize(mx.init.Xavier())
    if _mxnet.has_kvstore_base():
        class Store:        # the part of a 1.5 or 1.6 dist_sync store that the Trainer reads
            type = 'dist_sync'
        trainer, _, _ = train.make_trainer(net, PROTOCOLS['mnist_logreg'], 'ARSG', Store())
        assert trainer._kvstore_params['update_on_kvstore'] is True
        return
    from mxnet import autograd
    store = mx.kv.create('local')
    trainer, _, _ = train.make_trainer(net, PROTOCOLS['mnist_logreg'], 'ARSG', store)
    x = mx.nd.ones((4, 1, 28, 28))
    net(x)                                     # its deferred initialisation
    weight = list(net.collect_params().values())[0]
    before = weight.data().copy()
    with autograd.record():
        loss = net(x).sum()
    loss.backward()
    trainer.step(4)
    assert trainer._kvstore is store and trainer._update_on_kvstore
    assert (weight.data() != before).sum().asscalar() > 0
