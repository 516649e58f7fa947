"""The fused ARSG operator: build, choice of path, many arrays, odd sizes, engine ordering.
(Its parity over the whole option matrix runs in test_parity, on both paths.)"""

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import namsg
from namsg import kernels
from namsg import reference as ref
from cases import CASES_BY_ID
from harness import make_problem, run_mxnet, run_reference

requires_fused = pytest.mark.skipif(not kernels.load(), reason='fused operator not built: %s'
                                    % kernels._state['error'])


def test_fused_operator_builds_here():
    """CI's clean checkout must build it: a failure here is a failure, not a skip."""
    assert kernels.load(), kernels._state['error']


def test_build_from_scratch_into_a_given_path(tmp_path):
    path = kernels.build(tmp_path / 'libtest.so')
    assert path.is_file() and path.stat().st_size > 10000


def test_portable_build_when_the_compiler_rejects_the_cpu_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, 'ARCH_FLAGS', ['-mno-such-instruction-set'])
    path = kernels.build(tmp_path / 'libportable.so')
    assert path.is_file()


def test_cache_key_names_the_cpu(monkeypatch):
    here = kernels.library_path()
    monkeypatch.setattr(kernels, '_cpu_identity', lambda: 'flags: sse2')
    assert kernels.library_path() != here


@requires_fused
def test_operator_without_out_leaves_the_weight_and_returns_the_update():
    """Called as a plain operator (no out=weights), the new weights come back as outputs and
    the input weights are untouched; states are updated in place either way."""
    shapes = [(5,), (70001,)]
    results = []
    for in_place in (True, False):
        rng = np.random.default_rng(3)          # the same problem both times
        weights = [mx.nd.array(rng.normal(size=s) + 2) for s in shapes]
        grads = [mx.nd.array(rng.normal(size=s)) for s in shapes]
        before = [w.asnumpy() for w in weights]
        states = [(mx.nd.zeros(s), mx.nd.zeros(s), mx.nd.ones(s) * 1e-8) for s in shapes]
        inputs = [a for w, g, st in zip(weights, grads, states) for a in (w, g) + st]
        op = getattr(mx.nd._internal, kernels.OP_NAME)
        attrs = dict(num_weights=2, num_states=3, multi_precision=0, preconditioner=0,
                     lrs='0.01', wds='0.001', denominator_scales='1.0', beta1=0.9, beta2=0.99,
                     epsilon=1e-8, mu=0.1, rescale_grad=1.0, clip_gradient=-1.0)
        if in_place:
            op(*inputs, out=weights, **attrs)
            new = weights
        else:
            new = op(*inputs, **attrs)
            for w, b in zip(weights, before):
                np.testing.assert_array_equal(w.asnumpy(), b)
        results.append(([w.asnumpy() for w in new], [st[0].asnumpy() for st in states]))
    for a, b in zip(*results):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


@requires_fused
@pytest.mark.parametrize('multi_precision', [False, True])
def test_trainer_takes_the_fused_path_by_itself_one_call_per_step(monkeypatch, multi_precision):
    """Also with multi_precision=True on float32 parameters (which have no master copies)."""
    calls = []
    original = kernels.arsg_update
    monkeypatch.setattr(kernels, 'arsg_update',
                        lambda weights, *a, **k: calls.append(len(weights)) or
                        original(weights, *a, **k))
    monkeypatch.delenv(kernels.SWITCH, raising=False)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(8, in_units=4), gluon.nn.Dense(3, in_units=8))
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), 'arsg',
                            {'learning_rate': 0.01, 'multi_precision': multi_precision})
    for _ in range(2):
        with mx.autograd.record():
            loss = net(mx.nd.ones((2, 4))).sum()
        loss.backward()
        trainer.step(2)
    assert calls == [4, 4]        # all four arrays in one call, once per step


@requires_fused
@pytest.mark.parametrize('preconditioner', namsg.PRECONDITIONERS)
def test_many_arrays_of_odd_sizes_in_one_call(preconditioner):
    """60 arrays, from 1 element to beyond the OpenMP threshold, sizes that are no multiple of
    any vector width; fused, NDArray and reference agree after 20 steps."""
    rng = np.random.default_rng(11)
    shapes = [(1,), (3,), (7, 5), (1023,), (70001,), (129, 257)] + \
        [tuple(rng.integers(1, 40, size=rng.integers(1, 4))) for _ in range(54)]
    weights, grads = make_problem(20, seed=12, shapes=shapes)
    weights = [w.astype(np.float32) for w in weights]
    grads = [[g.astype(np.float32) for g in gs] for gs in grads]
    case = CASES_BY_ID['everything']
    case = type(case)(case.id, 'arsg', dict(case.kwargs, preconditioner=preconditioner),
                      lr_at=case.lr_at, mu_at=case.mu_at)
    fused, updater = run_mxnet(case, weights, grads, fused=True)
    plain, _ = run_mxnet(case, weights, grads, fused=False)
    expected = run_reference(case, weights, grads)
    assert updater.optimizer.aggregate_num >= len(shapes)
    for f, p, e in zip(fused, plain, expected):
        np.testing.assert_allclose(f, p, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f, e, rtol=1e-5, atol=1e-5)


@requires_fused
def test_engine_orders_the_update_with_asynchronous_producers_and_consumers():
    """Gradients come from a chain of asynchronous ops and the weights are read by ops queued
    right after the update: the declared inputs, outputs and mutable states order them."""
    results = {}
    for fused in (True, False):
        opt = namsg.ARSG(learning_rate=0.01, fused=fused)
        weight = mx.nd.ones((2000, 500))
        state = opt.create_state(0, weight)
        sums = []
        for step in range(3):
            grad = mx.nd.dot(mx.nd.ones((2000, 300)) * (step + 1), mx.nd.ones((300, 500)) / 300)
            opt.update_multi_precision(0, weight, grad, state)
            sums.append(weight.sum() + state[0].sum())
        results[fused] = np.array([s.asscalar() for s in sums])
    np.testing.assert_allclose(results[True], results[False], rtol=1e-6)


def test_unavailable_operator_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(kernels, '_state', dict(loaded=False, error='no compiler', warned=False))
    monkeypatch.delenv(kernels.SWITCH, raising=False)
    with pytest.warns(UserWarning, match='NDArray path'):
        assert kernels.use_fused(None) is False
    assert kernels.use_fused(None) is False            # warned once only
    with pytest.raises(kernels.FusedUnavailable, match='no compiler'):
        kernels.use_fused(True)
    monkeypatch.setenv(kernels.SWITCH, '1')
    with pytest.raises(kernels.FusedUnavailable):
        kernels.use_fused(None)


def test_switch_environment_variable(monkeypatch):
    monkeypatch.setenv(kernels.SWITCH, '0')
    assert kernels.use_fused(None) is False
    monkeypatch.setenv(kernels.SWITCH, 'sometimes')
    with pytest.raises(ValueError, match=kernels.SWITCH):
        kernels.use_fused(None)


def test_fused_argument_is_checked():
    with pytest.raises(ValueError, match='fused'):
        namsg.ARSG(fused='yes')


@requires_fused
def test_sparse_gradients_take_the_ndarray_path_inside_a_fused_optimizer():
    opt = namsg.ARSG(learning_rate=0.01, fused=True)
    weight = mx.nd.ones((5, 2), dtype='float64')
    state = opt.create_state(0, weight)
    grad = mx.nd.sparse.row_sparse_array((mx.nd.ones((1, 2), dtype='float64'),
                                          mx.nd.array([3], dtype='int64')), shape=(5, 2),
                                         dtype='float64')
    opt.update_multi_precision(0, weight, grad, state)
    x, s = ref.arsg_step(np.ones(2), ref.arsg_init(np.ones(2), 1e-8), np.ones(2), 0.01, 0.999,
                         0.99, 0.1, 1e-8)
    expected = np.ones((5, 2))
    expected[3] = x
    np.testing.assert_allclose(weight.asnumpy(), expected, rtol=1e-12)


@requires_fused
def test_weights_left_in_mkldnn_layout_by_inference_are_updated():
    """In a hybridized network MXNet's MKLDNN backend runs convolution + BN + ReLU fused for
    inference, and reorders the convolution's weight in place into a blocked layout; the next
    fused update must still see (and update) the weight in the default layout."""
    results = {}
    for fused in (True, False):
        mx.random.seed(4)
        net = gluon.nn.HybridSequential()
        net.add(gluon.nn.Conv2D(8, 3, in_channels=3), gluon.nn.BatchNorm(in_channels=8),
                gluon.nn.Activation('relu'), gluon.nn.Dense(10, in_units=800))
        net.initialize(mx.init.Xavier())
        net.hybridize()
        trainer = gluon.Trainer(net.collect_params(), namsg.ARSG(learning_rate=0.01,
                                                                 fused=fused))
        x = mx.nd.random.normal(shape=(4, 3, 12, 12))
        y = mx.nd.array([1, 2, 3, 4])
        big = mx.nd.random.normal(shape=(1500, 1500))
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        for step in range(4):
            with mx.autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            if step % 2:
                net(x).wait_to_read()     # inference forward, run before the update
            else:
                # Inference forward still queued when the update is called: behind a slow
                # product that its input waits for (what a loaded machine does by chance).
                slow = mx.nd.dot(big, big)
                net(x + 0 * slow[0, 0])
            trainer.step(4)
        results[fused] = [p.data().asnumpy() for p in net.collect_params().values()]
    for f, p in zip(results[True], results[False]):
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-6)


# -- the build: cache key, checksum, ahead of time, and which path runs (issue 12) --------------

def _python(code, cache, **env):
    """Run ``code`` in a fresh interpreter with the kernel cache at ``cache``."""
    environment = dict(os.environ, NAMSG_KERNEL_CACHE=str(cache), **env)
    environment.pop(kernels.SWITCH, None)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=environment, timeout=600)


def _copy_cached_library(cache):
    """The library this process uses, copied into ``cache`` under its own name with whatever
    lies beside it (the checksum), as a copied or shared cache holds it."""
    built = kernels.build()
    cache.mkdir(parents=True, exist_ok=True)
    for f in built.parent.glob(built.name + '*'):
        shutil.copy(f, cache / f.name)
    return cache / built.name


@requires_fused
def test_truncated_cached_library_is_rebuilt_before_mxnet_maps_it(tmp_path):
    """An interrupted copy or a full disk leaves a truncated library; mapping it killed every
    later process with SIGBUS. Now the checksum catches it and the library is rebuilt."""
    library = _copy_cached_library(tmp_path)
    size = library.stat().st_size
    with open(library, 'r+b') as f:
        f.truncate(size // 2)
    result = _python('import mxnet as mx, namsg\n'
                     'w = mx.nd.ones(3)\n'
                     'opt = namsg.ARSG(learning_rate=0.1, fused=True)\n'
                     'opt.update_multi_precision(0, w, mx.nd.ones(3), opt.create_state(0, w))\n'
                     'assert namsg.kernels._state["loaded"]\n'
                     'print(w.asnumpy())', tmp_path)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert 'rebuilt a damaged copy of the fused ARSG operator' in result.stderr
    assert library.stat().st_size == size and kernels.is_intact(library)


def test_library_is_written_with_its_checksum_and_checked(tmp_path, caplog):
    path = kernels.build(tmp_path / 'libcheck.so')
    checksum = (tmp_path / 'libcheck.so.sha256').read_text()
    assert checksum == '%s  libcheck.so\n' % hashlib.sha256(path.read_bytes()).hexdigest()
    assert kernels.is_intact(path)
    assert not list(tmp_path.glob('*.tmp*'))            # nothing half-written left behind
    built_at = path.stat().st_mtime_ns
    assert kernels.build(path) == path and path.stat().st_mtime_ns == built_at   # not rebuilt
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                         # same size, one byte changed
    path.write_bytes(bytes(data))
    assert not kernels.is_intact(path)
    (tmp_path / 'libcheck.so.sha256').unlink()
    assert not kernels.is_intact(path)                   # no checksum: not trusted either
    with caplog.at_level(logging.WARNING, logger='namsg.kernels'):
        kernels.build(path)
    assert kernels.is_intact(path)
    assert re.search(r'rebuilt a damaged copy of the fused ARSG operator in [0-9.]+ s',
                     caplog.text)


def test_cache_key_changes_with_every_compiler_flag(monkeypatch):
    """Libraries built with other flags (e.g. symbol visibility) must not be taken for this one."""
    here = kernels.library_path()
    monkeypatch.setattr(kernels, 'FLAGS', kernels.FLAGS + ['-fvisibility=hidden'])
    assert kernels.library_path() != here
    monkeypatch.undo()
    original = kernels._build_command
    monkeypatch.setattr(kernels, '_build_command',
                        lambda *a: original(*a) + ['-Wl,--exclude-libs,ALL'])
    assert kernels.library_path() != here


def test_unwritable_cache_names_the_variable_to_set(tmp_path, monkeypatch):
    (tmp_path / 'a-file').write_text('')
    monkeypatch.setenv('NAMSG_KERNEL_CACHE', str(tmp_path / 'a-file' / 'cache'))
    with pytest.raises(kernels.FusedUnavailable, match='NAMSG_KERNEL_CACHE.*namsg.kernels build'):
        kernels.build()


@requires_fused
def test_library_built_ahead_of_time_needs_no_compiler(tmp_path, monkeypatch):
    """Compute nodes often have no compiler: an intact cached library is used as it is."""
    library = _copy_cached_library(tmp_path)
    monkeypatch.setenv('NAMSG_KERNEL_CACHE', str(tmp_path))
    monkeypatch.setattr(kernels.shutil, 'which', lambda name: None)
    assert kernels.build() == library
    library.unlink()
    with pytest.raises(kernels.FusedUnavailable, match=r'needs a C\+\+ compiler to build'):
        kernels.build()


@requires_fused
def test_build_ahead_of_time_from_the_command_line(tmp_path):
    library = _copy_cached_library(tmp_path)
    result = subprocess.run([sys.executable, '-m', 'namsg.kernels', 'build'], text=True,
                            capture_output=True, env=dict(os.environ,
                                                          NAMSG_KERNEL_CACHE=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(library)
    assert 'built' not in result.stderr                  # an intact library is kept as it is
    result = subprocess.run([sys.executable, '-m', 'namsg.kernels', 'build'], text=True,
                            capture_output=True, env=dict(os.environ, CXX='no-such-compiler',
                                                          NAMSG_KERNEL_CACHE=str(tmp_path / 'x')))
    assert result.returncode == 1
    assert 'needs a C++ compiler to build and no-such-compiler is not on PATH' in result.stderr


def test_the_path_taken_and_why_is_said_once():
    """In a fresh process: on MXNet 1.9 the fused path (logged), before it one warning that the
    fused operator needs 1.9 and names the version found, not a missing file."""
    result = _python(
        'import logging, warnings\n'
        'logging.basicConfig(level=logging.INFO, format="LOG %(message)s")\n'
        'warnings.simplefilter("always")\n'
        'import mxnet as mx, namsg\n'
        'for _ in range(3):\n'
        '    print(namsg.kernels.use_fused(None))\n', kernels._cache_dir())
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if 'namsg' in line]
    if kernels.MXNET_VERSION >= kernels.FUSED_MXNET:
        assert result.stdout.split() == ['True'] * 3
        assert [line for line in lines if 'operator path' in line] == [
            'LOG namsg: ARSG takes the fused operator path (MXNet %s, %s)'
            % (mx.__version__, kernels.library_path())]
    else:
        assert result.stdout.split() == ['False'] * 3
        warning = 'namsg: the fused ARSG operator needs MXNet 1.9 or later (found %s); using ' \
                  'the NDArray path' % mx.__version__
        assert len([line for line in lines if warning in line]) == 1, lines
        assert 'No such file' not in result.stderr


def test_cache_lookup_writes_nothing_outside_the_cache(tmp_path, monkeypatch):
    """Asking where the library lives wrote the linker's version script into the current
    directory (a stray exports-*.map in the user's working tree)."""
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv('NAMSG_KERNEL_CACHE', str(tmp_path / 'cache'))
    kernels.library_path()
    assert list(work.iterdir()) == []
