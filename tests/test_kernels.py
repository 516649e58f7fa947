"""The fused ARSG update: build, choice of path and form, many arrays, odd sizes, engine
ordering. (Its parity over the whole option matrix runs in test_parity, on both paths; the
direct call's own tests are in test_direct.)"""

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

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
requires_direct = pytest.mark.skipif(kernels.library.direct_unavailable_reason() is not None,
                                     reason=str(kernels.library.direct_unavailable_reason()))
# The extension operator itself (MXNet 1.7 to 1.9), which the tests map (a process takes the
# direct call where it can).
requires_operator = pytest.mark.skipif(
    kernels.library.unavailable_reason() is not None,
    reason='MXNet %s has no extension operator: %s' % (mx.__version__,
                                                       kernels.library.unavailable_reason()))


# The forms this MXNet can build: none on mxnet-mkl 1.5 (see direct_unavailable_reason).
BUILDABLE = [form for form in kernels.library.fused_forms()
             if kernels.library._reason(form) is None]
requires_a_form = pytest.mark.skipif(
    not BUILDABLE, reason='MXNet %s can build no fused form: %s'
    % (mx.__version__, kernels.library.direct_unavailable_reason()))


def _expected_form():
    """The form this MXNet should take: the direct call, but for MXNet 1.5 built with MKLDNN
    (None)."""
    return None if kernels.library.direct_unavailable_reason() else kernels.DIRECT


def test_fused_operator_builds_here():
    """CI's clean checkout must build it: a failure here is a failure, not a skip. That is the
    direct call on every MXNet from 1.5.1 (not on mxnet-mkl 1.5, where the reason is kept);
    from MXNet 1.7 on the extension operator too."""
    assert kernels.load() == (_expected_form() is not None), kernels._state['error']
    assert kernels.fused_form() == _expected_form(), kernels.library.unavailable_reason()
    if _expected_form() is None:
        assert kernels._state['error'] == kernels.library.direct_unavailable_reason()
    if kernels.library.MXNET_VERSION >= kernels.library.FUSED_MXNET:
        assert kernels._mapped_form(kernels.OPERATOR) == kernels.library_path(kernels.OPERATOR)


@requires_a_form
def test_build_from_scratch_into_a_given_path(tmp_path):
    path = kernels.build(tmp_path / 'libtest.so')
    assert path.is_file() and path.stat().st_size > 10000


@requires_a_form
def test_portable_build_when_the_compiler_rejects_the_cpu_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels.library, 'ARCH_FLAGS', ['-mno-such-instruction-set'])
    path = kernels.build(tmp_path / 'libportable.so')
    assert path.is_file()


def test_cache_key_does_not_depend_on_where_namsg_is_installed(tmp_path, monkeypatch):
    """The same sources in another folder (namsg installed into another venv, one per MXNet)
    give the same direct-call library: the key held the sources' paths, so each venv built its
    own."""
    here = kernels.library_path(kernels.DIRECT)
    for name in ('DIRECT_SOURCE', 'KERNEL_HEADER'):
        original = getattr(kernels.library, name)
        copy = tmp_path / 'another venv' / 'namsg' / 'kernels' / original.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(original, copy)
        monkeypatch.setattr(kernels.library, name, copy)
    assert kernels.library_path(kernels.DIRECT) == here
    kernels.library.DIRECT_SOURCE.write_text(kernels.library.DIRECT_SOURCE.read_text() + '\n')
    assert kernels.library_path(kernels.DIRECT) != here       # its contents are in the key


def test_cache_key_names_the_cpu(monkeypatch):
    here = kernels.library_path()
    monkeypatch.setattr(kernels.library, '_cpu_identity', lambda: 'flags: sse2')
    assert kernels.library_path() != here


@requires_operator
def test_operator_without_out_leaves_the_weight_and_returns_the_update():
    """Called as a plain operator (no out=weights), the new weights come back as outputs and
    the input weights are untouched; states are updated in place either way."""
    kernels._mapped_form(kernels.OPERATOR)
    shapes = [(5,), (70001,)]
    results = []
    for in_place in (True, False):
        rng = np.random.default_rng(3)          # the same problem both times
        weights = [mx.nd.array(rng.normal(size=s) + 2) for s in shapes]
        grads = [mx.nd.array(rng.normal(size=s)) for s in shapes]
        before = [w.asnumpy() for w in weights]
        states = [(mx.nd.zeros(s), mx.nd.zeros(s), mx.nd.ones(s) * 1e-8) for s in shapes]
        inputs = [a for w, g, st in zip(weights, grads, states) for a in (w, g) + st]
        op = getattr(mx.nd._internal, kernels.operator.OP_NAME)
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


def record_calls(monkeypatch, name):
    """The number of weights of each call to ``kernels.<name>`` from now on (a list that
    grows), the calls still made."""
    calls = []
    original = getattr(kernels, name)
    monkeypatch.setattr(kernels, name, lambda weights, *a, **k: calls.append(len(weights)) or
                        original(weights, *a, **k))
    return calls


@pytest.mark.parametrize('multi_precision', [False, True])
def test_trainer_takes_the_fused_path_by_itself_one_call_per_step(monkeypatch, multi_precision,
                                                                  each_fused_form):
    """Also with multi_precision=True on float32 parameters (which have no master copies)."""
    calls = record_calls(monkeypatch, 'arsg_update')
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


@pytest.mark.parametrize('preconditioner', namsg.PRECONDITIONERS)
def test_many_arrays_of_odd_sizes_in_one_call(preconditioner, each_fused_form):
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


def test_engine_orders_the_update_with_asynchronous_producers_and_consumers(each_fused_form):
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
    for value, read in ((' 1 ', '1'), ('AUTO', 'auto'), ('', 'auto')):
        monkeypatch.setenv(kernels.SWITCH, value)
        assert kernels.fused_switch() == read
    monkeypatch.setenv(kernels.SWITCH, 'sometimes')
    with pytest.raises(ValueError, match=kernels.SWITCH):
        kernels.use_fused(None)
    with pytest.raises(ValueError, match=kernels.SWITCH):
        namsg.check_environment()


def test_fused_argument_is_checked():
    with pytest.raises(ValueError, match='fused'):
        namsg.ARSG(fused='yes')


def test_sparse_gradients_take_the_ndarray_path_inside_a_fused_optimizer(each_fused_form):
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


def train_with_inference_between_steps(fused, steps=4):
    """The parameters after ``steps`` Trainer steps of a hybridized conv + BN + ReLU + dense net
    with ARSG(fused=fused), an inference forward between the steps: run before the update at
    odd steps, still queued when the update is called at even ones."""
    mx.random.seed(4)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(8, 3, in_channels=3), gluon.nn.BatchNorm(in_channels=8),
            gluon.nn.Activation('relu'), gluon.nn.Dense(10, in_units=800))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), namsg.ARSG(learning_rate=0.01, fused=fused))
    x = mx.nd.random.normal(shape=(4, 3, 12, 12))
    y = mx.nd.array([1, 2, 3, 4])
    big = mx.nd.random.normal(shape=(1500, 1500))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for step in range(steps):
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
    return [p.data().asnumpy() for p in net.collect_params().values()]


def test_weights_left_in_mkldnn_layout_by_inference_are_updated(each_fused_form):
    """In a hybridized network MXNet's MKLDNN backend runs convolution + BN + ReLU fused for
    inference, and reorders the convolution's weight in place into a blocked layout; the next
    fused update must still see (and update) the weight in the default layout."""
    fused, plain = (train_with_inference_between_steps(fused) for fused in (True, False))
    for f, p in zip(fused, plain):
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-6)


# -- the build: cache key, checksum, ahead of time, and which path runs (issue 12) --------------

def _python(code, cache, **env):
    """Run ``code`` in a fresh interpreter with the kernel cache at ``cache``."""
    environment = dict(os.environ, NAMSG_KERNEL_CACHE=str(cache), **env)
    environment.pop(kernels.SWITCH, None)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=environment, timeout=600)


def _copy_cached_library(cache, form=None):
    """The library this process uses (or that of ``form``), copied into ``cache`` under its own
    name with whatever lies beside it (the checksum), as a copied or shared cache holds it."""
    built = kernels.build(form=form)
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
    assert re.search('rebuilt a damaged copy of the fused ARSG (operator|direct-call library)',
                     result.stderr)
    assert library.stat().st_size == size and kernels.library.is_intact(library)


@requires_a_form
def test_library_is_written_with_its_checksum_and_checked(tmp_path, caplog):
    path = kernels.build(tmp_path / 'libcheck.so')
    checksum = (tmp_path / 'libcheck.so.sha256').read_text()
    assert checksum == '%s  libcheck.so\n' % hashlib.sha256(path.read_bytes()).hexdigest()
    assert kernels.library.is_intact(path)
    assert not list(tmp_path.glob('*.tmp*'))            # nothing half-written left behind
    built_at = path.stat().st_mtime_ns
    assert kernels.build(path) == path and path.stat().st_mtime_ns == built_at   # not rebuilt
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                         # same size, one byte changed
    path.write_bytes(bytes(data))
    assert not kernels.library.is_intact(path)
    (tmp_path / 'libcheck.so.sha256').unlink()
    assert not kernels.library.is_intact(path)                   # no checksum: not trusted either
    with caplog.at_level(logging.WARNING, logger='namsg.kernels'):
        kernels.build(path)
    assert kernels.library.is_intact(path)
    assert re.search(r'rebuilt a damaged copy of the fused ARSG (operator|direct-call library) '
                     r'in [0-9.]+ s', caplog.text)


def test_cache_key_changes_with_every_compiler_flag(monkeypatch):
    """Libraries built with other flags (e.g. symbol visibility) must not be taken for this one."""
    here = kernels.library_path()
    monkeypatch.setattr(kernels.library, 'FLAGS', kernels.library.FLAGS + ['-fvisibility=hidden'])
    assert kernels.library_path() != here
    monkeypatch.undo()
    original = kernels.library._build_command
    monkeypatch.setattr(kernels.library, '_build_command',
                        lambda *a: original(*a) + ['-Wl,--exclude-libs,ALL'])
    assert kernels.library_path() != here


ADVICE = ('set $NAMSG_KERNEL_CACHE to a writable directory, or build the library ahead of '
          'time where that directory is writable')


@requires_a_form
def test_unwritable_cache_names_the_variable_to_set_and_not_the_command_that_fails(
        tmp_path, monkeypatch):
    """The advice was `python -m namsg.kernels build` alone, which fails the same way there."""
    (tmp_path / 'a-file').write_text('')
    monkeypatch.setenv('NAMSG_KERNEL_CACHE', str(tmp_path / 'a-file' / 'cache'))
    with pytest.raises(kernels.FusedUnavailable, match=re.escape(ADVICE)):
        kernels.build()
    result = subprocess.run([sys.executable, '-m', 'namsg.kernels', 'build'], text=True,
                            capture_output=True, env=dict(os.environ, NAMSG_KERNEL_CACHE=str(
                                tmp_path / 'a-file' / 'cache')))
    assert result.returncode == 1 and ADVICE in result.stderr


@requires_a_form
def test_cache_whose_files_cannot_be_created_gives_the_same_advice(tmp_path, monkeypatch):
    """A cache whose lock file exists but where no new file can be made (read-only for this
    user; as root, simulated) said `writing ... failed` with no advice."""
    monkeypatch.setenv('NAMSG_KERNEL_CACHE', str(tmp_path))
    (tmp_path / '.build.lock').write_text('')

    def refuse(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(kernels.library.tempfile, 'mkstemp', refuse)
    with pytest.raises(kernels.FusedUnavailable, match=re.escape(ADVICE)):
        kernels.build(force=True)


def test_relative_or_empty_cache_variable_still_loads(tmp_path, monkeypatch):
    """mx.library.load takes absolute paths only: a relative $NAMSG_KERNEL_CACHE built the
    library and then failed to load it (and an empty one put the cache in the working
    directory)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('NAMSG_KERNEL_CACHE', 'relative-cache')
    assert kernels.library_path().parent == tmp_path / 'relative-cache'
    monkeypatch.setenv('NAMSG_KERNEL_CACHE', '')
    assert kernels.library_path().parent == Path.home() / '.cache' / 'namsg'
    if kernels.load():
        _copy_cached_library(tmp_path / 'relative-cache')
        result = subprocess.run([sys.executable, '-c', 'import namsg\n'
                                 'assert namsg.kernels.load(), namsg.kernels._state'],
                                capture_output=True, text=True, cwd=str(tmp_path),
                                env=dict(os.environ, NAMSG_KERNEL_CACHE='relative-cache'))
        assert result.returncode == 0, result.stderr[-3000:]


@requires_fused
def test_library_built_ahead_of_time_needs_no_compiler(tmp_path, monkeypatch):
    """Compute nodes often have no compiler: an intact cached library is used as it is."""
    library = _copy_cached_library(tmp_path)
    monkeypatch.setenv('NAMSG_KERNEL_CACHE', str(tmp_path))
    monkeypatch.setattr(kernels.library.shutil, 'which', lambda name: None)
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


PATH_TAKEN = ('import logging, warnings\n'
              'logging.basicConfig(level=logging.INFO, format="LOG %(message)s")\n'
              'warnings.simplefilter("always")\n'
              'import mxnet as mx, namsg\n'
              '{setup}'
              'for _ in range(3):\n'
              '    print(namsg.kernels.use_fused(None), namsg.kernels.fused_form())\n')


def _path_lines(result):
    """namsg's log lines and warnings on ``result``'s stderr (their messages begin with
    'namsg: '; other packages' warnings name files whose path may hold 'namsg', such as a
    clone's venv), but the build line."""
    assert result.returncode == 0, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if 'namsg: ' in line and
            ' built the fused' not in line]


def test_the_path_taken_and_why_is_said_once():
    """In a fresh process, one line: the fused direct-call path (INFO), naming its library; no
    warning."""
    result = _python(PATH_TAKEN.format(setup=''), kernels.library._cache_dir())
    lines = _path_lines(result)
    if _expected_form() is None:          # mxnet-mkl 1.5
        assert result.stdout.split() == ['False', 'None'] * 3
        assert len([line for line in lines if kernels.library.direct_unavailable_reason() +
                    '; using the NDArray path' in line]) == 1, lines
        return
    assert result.stdout.split() == ['True', 'direct'] * 3
    expected = 'LOG namsg: ARSG takes the fused direct-call path (MXNet %s, %s)' % (
        mx.__version__, kernels.library_path(kernels.DIRECT))
    assert lines == [expected], lines          # and no warning from namsg


@requires_a_form
def test_without_a_compiler_or_library_the_ndarray_path_is_said_once(tmp_path):
    """Neither form can be built (no compiler, an empty cache): one warning naming the reason
    once, also from MXNet 1.7 on where both forms fail for it."""
    result = _python(PATH_TAKEN.format(setup=''), tmp_path, CXX='no-such-compiler')
    lines = _path_lines(result)
    assert result.stdout.split() == ['False', 'None'] * 3
    warning = ('namsg: the fused ARSG update needs a C++ compiler to build and '
               'no-such-compiler is not on PATH (install g++ or set $CXX); using the NDArray '
               'path (slower, same results). Set NAMSG_FUSED=0 to silence this.')
    assert len([line for line in lines if warning in line]) == 1, lines
    assert not [line for line in lines if 'takes the fused' in line], lines


@requires_operator
def test_the_operator_stands_in_for_a_direct_call_that_cannot_be_had(tmp_path):
    """From MXNet 1.7 on, where the direct call cannot be had (here: a C API function that it
    calls missing from this MXNet) the extension operator is the fused path, said once at
    warning level with the direct call's reason, and it computes the reference."""
    setup = ('namsg.kernels.library._MXNET_API = dict(namsg.kernels.library._MXNET_API, '
             'get_data="MXNoSuchFunction")\n'
             'sys_path = {tests!r}\n'
             'import sys; sys.path.insert(0, sys_path)\n'
             'import numpy as np\n'
             'from cases import CASES_BY_ID\n'
             'from harness import make_problem, run_mxnet, run_reference\n'
             'weights, grads = make_problem(10, seed=5)\n'
             'case = CASES_BY_ID["everything"]\n'
             'fused, _ = run_mxnet(case, weights, grads, fused=True)\n'
             'for f, e in zip(fused, run_reference(case, weights, grads)):\n'
             '    np.testing.assert_allclose(f, e, rtol=1e-5, atol=1e-5)\n'
             ).format(tests=str(Path(__file__).resolve().parent))
    result = _python(PATH_TAKEN.format(setup=setup), kernels.library._cache_dir())
    lines = _path_lines(result)
    assert result.stdout.split() == ['True', 'operator'] * 3
    expected = ('LOG namsg: ARSG takes the fused operator path (MXNet %s, %s): the fused direct '
                'call is not available: the fused ARSG update calls MXNet C API functions that '
                'this MXNet lacks: MXNoSuchFunction' % (mx.__version__,
                                                         kernels.library_path(kernels.OPERATOR)))
    assert lines == [expected], lines


@requires_operator
def test_load_takes_a_form_mapped_earlier_without_mapping_it_again(tmp_path):
    """load() mapped the operator into MXNet a second time where it had been mapped before
    (by kernels._mapped_form, as the benchmark and the tests do) and the direct call then
    failed."""
    script = ('import namsg\n'
              'from namsg import kernels\n'
              'kernels._mapped_form(kernels.OPERATOR)\n'
              'kernels.library._MXNET_API = dict(kernels.library._MXNET_API, '
              'get_data="MXNoSuchFunction")\n'
              'loads = []\n'
              'load_library = kernels.operator._load_library\n'
              'kernels.operator._load_library = lambda path: loads.append(path) or '
              'load_library(path)\n'
              'assert kernels.load(), kernels._state\n'
              'print(kernels.fused_form(), len(loads), '
              'kernels._state["path"] == kernels.library_path(kernels.OPERATOR))\n')
    _copy_cached_library(tmp_path, kernels.OPERATOR)
    result = _python(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['operator', '0', 'True']


def test_mxnet_15_with_mkldnn_takes_the_ndarray_path_with_the_reason(monkeypatch):
    """MXNet 1.5's MXNDArrayGetData refuses an array in an MKLDNN layout, which an inference
    convolution leaves its weight in: the direct call is not offered there (it is on 1.6)."""
    monkeypatch.setattr(kernels.library, 'MXNET_VERSION', (1, 5, 1))
    monkeypatch.setattr(kernels.library, '_mkldnn', lambda: True)
    monkeypatch.setattr(kernels, '_state', dict(loaded=False, error=None, warned=False,
                                                form=None, path=None))
    monkeypatch.delenv(kernels.SWITCH, raising=False)
    reason = ('the fused ARSG update cannot be called directly on MXNet %s built with MKLDNN: '
              'its MXNDArrayGetData refuses an array that an MKLDNN layer left in its own '
              'layout (MXNet 1.6 reorders it)' % mx.__version__)
    assert kernels.library.direct_unavailable_reason() == reason
    assert kernels.library.fused_forms() == (kernels.DIRECT,)
    with pytest.warns(UserWarning, match=re.escape(reason + '; using the NDArray path')):
        assert kernels.use_fused(None) is False
    monkeypatch.setattr(kernels.library, 'MXNET_VERSION', (1, 6, 0))
    assert kernels.library.direct_unavailable_reason() is None


def test_a_process_that_loaded_the_kernel_exits_with_its_own_status_and_output(tmp_path,
                                                                               each_fused_form):
    """MXNet 1.7 and 1.8 close extension libraries at exit in a loop that reads freed memory
    (apache/mxnet#20411): a process whose work was done died with SIGABRT or SIGSEGV, for some
    heaps (here one run in two, with some environments). MALLOC_PERTURB_ makes glibc overwrite
    freed memory, which makes that loop fail every time. The process must end with the status
    it gave exit() and with its output written."""
    script = ('import sys, mxnet as mx, namsg\n'
              'assert namsg.kernels.load()\n'
              'namsg.kernels._mapped_form({form!r})\n'
              'namsg.kernels._state["form"] = {form!r}\n'.format(form=each_fused_form) +
              'opt = namsg.ARSG(learning_rate=0.1, fused=True)\n'
              'w = mx.nd.ones(3)\n'
              'opt.update_multi_precision(0, w, mx.nd.ones(3), opt.create_state(0, w))\n'
              'sys.stdout.write("weights %s" % w.asnumpy().tolist())\n'
              'sys.exit(3)\n')
    for form in BUILDABLE:
        _copy_cached_library(tmp_path, form)
    for perturb in ('165', '90'):
        result = _python(script, tmp_path, MALLOC_PERTURB_=perturb)
        assert result.returncode == 3, (result.returncode, result.stderr[-3000:])
        assert result.stdout.startswith('weights [0.899'), result.stdout


def test_cache_lookup_writes_nothing_outside_the_cache(tmp_path, monkeypatch):
    """Asking where the library lives wrote the linker's version script into the current
    directory (a stray exports-*.map in the user's working tree)."""
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv('NAMSG_KERNEL_CACHE', str(tmp_path / 'cache'))
    kernels.library_path()
    assert list(work.iterdir()) == []


# -- the cache: what interrupted builds leave, listing and cleaning it (issue 25) --------------

def _fake_library(cache, name, age_s=0.0, size=1000):
    """A file named as a cached library, with its checksum, written ``age_s`` seconds ago."""
    path = cache / name
    path.write_bytes(b'x' * size)
    (cache / (name + '.sha256')).write_text('0' * 64 + '  ' + name + '\n')
    when = time.time() - age_s
    for f in (path, cache / (name + '.sha256')):
        os.utime(f, (when, when))
    return path


def _interrupted_build_leftovers(cache):
    """What a build killed half-way leaves: its library, checksum and linker-script temporaries
    (the names mkstemp gives them)."""
    names = ['tmpk1llEd.so.tmp', 'tmpk1llEd.so.tmp.sha256', 'tmpq9x_a2.map.tmp']
    for name in names:
        (cache / name).write_bytes(b'half')
    return [cache / name for name in names]


@requires_a_form
def test_temporaries_of_a_killed_build_are_removed_by_the_next_build(tmp_path, caplog):
    """They stayed in the cache for ever. Every temporary file is made under the cache's
    exclusive lock and renamed or removed before it is let go, so the next build, holding the
    lock, knows that any it finds was left by a build that died."""
    leftovers = _interrupted_build_leftovers(tmp_path)
    keep = tmp_path / 'notes.txt'
    keep.write_text('not ours')
    with caplog.at_level(logging.WARNING, logger='namsg.kernels'):
        kernels.build(tmp_path / 'libtemporaries.so')
    assert not [f for f in leftovers if f.exists()]
    assert keep.exists()
    assert 'removed 3 temporary files that an interrupted build left in %s' % tmp_path \
        in caplog.text


# A process that holds the cache's lock as a build does, makes its temporary file, and, when
# told (a line on its stdin), renames it into place and lets go.
BUILDER = ('import fcntl, os, sys\n'
           'fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT)\n'
           'fcntl.flock(fd, fcntl.LOCK_EX)\n'
           'open(sys.argv[2], "w").write("building")\n'
           'print("locked", flush=True)\n'
           'sys.stdin.readline()\n'
           'open(sys.argv[3] + ".sha256", "w").write("0" * 64)\n'
           'os.rename(sys.argv[2], sys.argv[3])\n')


def _builder(cache, library):
    builder = subprocess.Popen([sys.executable, '-c', BUILDER, str(cache / '.build.lock'),
                                str(cache / 'tmpbusy.so.tmp'), str(library)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert builder.stdout.readline().strip() == 'locked'
    return builder


def _release(process):
    process.stdin.write('go\n')
    process.stdin.flush()


@requires_a_form
def test_a_build_waits_for_one_in_progress_and_keeps_its_temporary_files(tmp_path):
    """While another process builds (it holds the lock), its temporary file is not touched."""
    builder = _builder(tmp_path, tmp_path / 'libdone.so')
    try:
        threading.Timer(2.0, _release, [builder]).start()
        start = time.monotonic()
        kernels.build(tmp_path / 'libwaiting.so')
        assert time.monotonic() - start > 1.5        # it waited for the builder
    finally:
        builder.wait(timeout=60)
    assert builder.returncode == 0
    assert (tmp_path / 'libdone.so').read_text() == 'building'     # renamed by its builder
    assert kernels.library.is_intact(tmp_path / 'libwaiting.so')


def test_library_name_carries_the_mxnet_version(monkeypatch):
    """The operator's library is MXNet's version's; the direct call's serves every MXNet."""
    version = mx.__version__
    direct = kernels.library_path(kernels.DIRECT)
    assert re.fullmatch(r'libnamsg_arsg_direct_[0-9a-f]{16}\.so', direct.name)
    assert kernels.library_path() == direct         # the form this MXNet takes
    if kernels.library.unavailable_reason() is None:
        assert kernels.library_path(kernels.OPERATOR).name.startswith(
            'libnamsg_arsg_mxnet%s_' % version)
    monkeypatch.setattr(kernels.mx, '__version__', version + '.post9')
    if kernels.library.unavailable_reason() is None:
        assert kernels.library_path(kernels.OPERATOR).name.startswith(
            'libnamsg_arsg_mxnet%s.post9_' % version)
    assert kernels.library_path(kernels.DIRECT) == direct


def _cli(cache, *args):
    return subprocess.run([sys.executable, '-m', 'namsg.kernels'] + list(args), text=True,
                          capture_output=True, timeout=600,
                          env=dict(os.environ, NAMSG_KERNEL_CACHE=str(cache)))


def _cache_with_libraries_of_other_versions(cache):
    """This MXNet's libraries (the operator's, where it can have one, and the direct call's),
    another MXNet's, this MXNet version's from other sources, a direct call's from other
    sources, one named by an older namsg."""
    cache.mkdir(parents=True, exist_ok=True)
    current = [_copy_cached_library(cache, form) for form in kernels.library.fused_forms()
               if kernels.library._reason(form) is None]
    others = [_fake_library(cache, 'libnamsg_arsg_mxnet1.6.9_0123456789abcdef.so', 3 * 86400,
                            2500000),
              _fake_library(cache, 'libnamsg_arsg_mxnet%s_fedcba9876543210.so' % mx.__version__,
                            2 * 3600),
              _fake_library(cache, 'libnamsg_arsg_direct_fedcba9876543210.so', 3 * 3600),
              _fake_library(cache, 'libnamsg_arsg_00112233aabbccdd.so', 600)]
    (cache / 'exports-0000000000000000.map').write_text('{ local: *; };\n')
    return current, others


@requires_a_form
def test_list_shows_each_library_with_its_mxnet_size_age_and_owner(tmp_path):
    current, _ = _cache_with_libraries_of_other_versions(tmp_path)
    _interrupted_build_leftovers(tmp_path)
    result = _cli(tmp_path, 'list')
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()
            if line.startswith('libnamsg_arsg_')}
    assert re.search(r'libnamsg_arsg_mxnet1\.6\.9_0123456789abcdef\.so +1\.6\.9 +2\.5 MB +3 d '
                     r'+no: MXNet 1\.6\.9$', rows['libnamsg_arsg_mxnet1.6.9_0123456789abcdef.so'])
    assert re.search(r' [0-9.]+ kB +2 h +no: other namsg sources, compiler or CPU$',
                     rows['libnamsg_arsg_mxnet%s_fedcba9876543210.so' % mx.__version__])
    assert re.search(r' any +[0-9.]+ kB +3 h +no: other namsg sources, compiler or CPU$',
                     rows['libnamsg_arsg_direct_fedcba9876543210.so'])
    assert re.search(r' \? +[0-9.]+ kB +10 min +no: built by an older namsg$',
                     rows['libnamsg_arsg_00112233aabbccdd.so'])
    assert len(current) == (2 if kernels.library.MXNET_VERSION >= (1, 7) else 1)
    for library in current:
        direct = library.name.startswith(kernels.library.DIRECT_PREFIX)
        # The form this MXNet takes is 'yes'; the operator standing in for it is said to.
        assert rows[library.name].endswith(' yes' if direct else ' yes, stand-in')
        assert (' any ' in rows[library.name]) == direct
    assert len(rows) == 4 + len(current)
    assert '3 temporary files of interrupted builds' in result.stdout
    assert result.stdout.startswith('kernel cache %s: %d libraries' % (tmp_path, len(rows)))


@pytest.mark.parametrize('command', [['list'], ['clean'], ['clean', '--all']])
def test_a_cache_path_through_a_file_is_an_error_not_an_empty_cache(tmp_path, command):
    """`list` and `clean` took a $NAMSG_KERNEL_CACHE where no directory can be (the path, or a
    folder above it, a file: a mistyped variable) for an empty cache, and exited 0."""
    (tmp_path / 'a-file').write_text('kept')
    for cache in (tmp_path / 'a-file', tmp_path / 'a-file' / 'cache'):
        with pytest.raises(NotADirectoryError, match='a-file is a file'):
            (kernels.cached_libraries if command == ['list'] else kernels.clean_cache)(cache)
        result = _cli(cache, *command)
        assert result.returncode == 1 and result.stdout == ''
        assert ('namsg.kernels: cannot %s the kernel cache %s: %s is a file, so no kernel cache '
                'can be there: set $NAMSG_KERNEL_CACHE to a directory this user may write'
                % (command[0], cache, tmp_path / 'a-file')) in result.stderr
    assert (tmp_path / 'a-file').read_text() == 'kept'


def test_a_cache_not_made_yet_lists_as_empty_and_is_not_made(tmp_path):
    cache = tmp_path / 'not' / 'yet'
    result = _cli(cache, 'list')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('kernel cache %s: 0 libraries, 0 B (not made yet: the first '
                                    'fused update or `python -m namsg.kernels build` makes it)'
                                    % cache)
    result = _cli(cache, 'clean')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '%s: removed 0 files, 0 B' % cache
    assert not (tmp_path / 'not').exists()


@requires_a_form
def test_clean_removes_what_this_mxnet_does_not_use_and_all_with_a_flag(tmp_path):
    current, others = _cache_with_libraries_of_other_versions(tmp_path)
    leftovers = _interrupted_build_leftovers(tmp_path)
    (tmp_path / 'notes.txt').write_text('not ours')
    result = _cli(tmp_path, 'clean')
    assert result.returncode == 0, result.stderr
    for path in others + leftovers + [tmp_path / 'exports-0000000000000000.map']:
        assert not path.exists(), path
        assert 'removed %s' % path in result.stdout
    assert (tmp_path / 'notes.txt').exists()
    assert current and all(kernels.library.is_intact(library) for library in current)
    assert re.search(r': removed \d+ files, 2\.5 MB$', result.stdout.strip())
    result = _cli(tmp_path, 'clean', '--all')
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['.build.lock', 'notes.txt']


def _clean_while_held(cache, holder, *flags):
    """Run `clean` while ``holder`` holds the cache's lock; let the holder go once clean says
    it waits. (stdout, stderr, exit status) of clean."""
    clean = subprocess.Popen([sys.executable, '-m', 'namsg.kernels', 'clean'] + list(flags),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, NAMSG_KERNEL_CACHE=str(cache)))
    try:
        waiting = clean.stderr.readline()
        _release(holder)
        out, err = clean.communicate(timeout=600)
    finally:
        holder.wait(timeout=600)
        clean.wait(timeout=600)
    assert holder.returncode == 0
    return out, waiting + err, clean.returncode


def test_clean_never_removes_a_library_that_another_process_is_building(tmp_path):
    """clean waits for the build in progress, and what that build wrote while clean waited
    stays: only what was there before is removed."""
    _fake_library(tmp_path, 'libnamsg_arsg_mxnet1.6.9_0123456789abcdef.so', 3600)
    finished = tmp_path / 'libnamsg_arsg_mxnet1.6.8_aaaaaaaaaaaaaaaa.so'
    out, err, status = _clean_while_held(tmp_path, _builder(tmp_path, finished))
    assert status == 0, err
    assert err.startswith('namsg: waiting for the build or load in progress in %s' % tmp_path)
    assert finished.read_text() == 'building'
    assert not (tmp_path / 'libnamsg_arsg_mxnet1.6.9_0123456789abcdef.so').exists()
    assert 'tmpbusy' not in out and 'mxnet1.6.8' not in out


@requires_fused
def test_clean_waits_while_a_process_checks_and_maps_the_library(tmp_path):
    """A process holds the cache's lock shared from the checksum check to mx.library.load, so
    that clean --all cannot remove the library in between."""
    _copy_cached_library(tmp_path)
    reader = subprocess.Popen(
        [sys.executable, '-c',
         'import sys, namsg\n'
         'from namsg import kernels\n'
         'original, calls = kernels.library.is_intact, []\n'
         'def checked_slowly(path):\n'
         '    calls.append(path)\n'
         '    if len(calls) == 2:         # the check under the shared lock (build() has none)\n'
         '        print("locked", flush=True)\n'
         '        sys.stdin.readline()\n'
         '    return original(path)\n'
         'kernels.library.is_intact = checked_slowly\n'
         'assert kernels.load(), kernels._state\n'
         'print("loaded", flush=True)\n'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, NAMSG_KERNEL_CACHE=str(tmp_path)))
    assert reader.stdout.readline().strip() == 'locked'
    out, err, status = _clean_while_held(tmp_path, reader, '--all')
    assert reader.stdout.read().strip() == 'loaded'
    assert status == 0 and 'waiting for the build or load' in err
    assert not list(tmp_path.glob('libnamsg_arsg_*'))


OWN_EXTENSION_API = r'''
import sys
from pathlib import Path
import mxnet as mx
import numpy as np
sys.path.insert(0, {tests!r})
from namsg import kernels
from cases import CASES_BY_ID
from harness import make_problem, run_mxnet, run_reference

kernels.library._lib_api_source = lambda: Path('/nonexistent/src/lib_api.cc')   # as in a 1.8 wheel
assert kernels.library._api_sources() == [kernels.library.EXTENSION_API], \
    kernels.library._api_sources()
assert kernels.load(), kernels._state['error']
kernels._mapped_form(kernels.OPERATOR)
kernels._state['form'] = kernels.OPERATOR
case = CASES_BY_ID['everything']
weights, grads = make_problem(10, seed=5)
fused, _ = run_mxnet(case, weights, grads, fused=True)
for f, e in zip(fused, run_reference(case, weights, grads)):
    np.testing.assert_allclose(f, e, rtol=1e-5, atol=1e-5)
w = mx.nd.ones(3)
try:       # an error of the operator reaches MXNet's message (_msgSize, _msgGet)
    getattr(mx.nd._internal, kernels.operator.OP_NAME)(w, w, w, num_weights=1, num_states=2,
                                                       multi_precision=0, preconditioner=0)
except mx.base.MXNetError as e:
    print('error:', ' '.join(str(e).split()))
print('reference matched')
'''


@requires_operator
def test_namsgs_own_extension_api_loads_and_computes_the_reference(tmp_path):
    """The 1.8 wheels ship lib_api.h without the src/lib_api.cc that implements it; namsg
    compiles its own (extension_api.cc). Built so against this MXNet's header, as the 1.8 build
    is, the operator loads, computes the reference and reports its errors. (MXNet 1.7's header
    holds the whole implementation: nothing is added there.)"""
    if kernels.library.api_version() < 10:
        assert kernels.library._api_sources() == []
        return
    result = _python(OWN_EXTENSION_API.format(tests=str(Path(__file__).resolve().parent)),
                     tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'reference matched' in result.stdout
    assert "Error calling ParseAttrs for custom operator '_namsg_arsg_update'" in result.stdout
    assert 'inconsistent num_weights / num_states / preconditioner' in result.stdout
    built = [p.name for p in tmp_path.glob('libnamsg_arsg_mxnet*.so')]
    # Another cache key than this process's library, unless that is built so too (1.8).
    assert len(built) == 1
    assert (built[0] != kernels.library_path(kernels.OPERATOR).name) == \
        kernels.library._lib_api_source().is_file()
