"""The fused kernel does not depend on what else the process has loaded (issue 16).

Horovod loads its library with RTLD_GLOBAL, and that library links libmxnet.so, which carries its
own copies of the extension API's C++ symbols (lib_api.cc, built with GCC 4.8's std::string).
Once they are in the global scope, a kernel library that exports those names has its calls bound
to the foreign copies, and crashes (segmentation fault, "free(): invalid pointer"). The same
happens beside any other extension built from lib_api.cc with another C++ ABI. Both are
reproduced here without Horovod, each in a subprocess (a crash must fail a test, not pytest).
The direct call's library (MXNet 1.5 and 1.6, and the stand-in for the operator) exports two C
functions of its own names and nothing else, and is checked beside libmxnet.so's copies too.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import pytest

from namsg import kernels

MXNET_DIR = Path(mx.__file__).resolve().parent
HERE = Path(__file__).resolve().parent

# A second MXNet extension, one trivial operator (y = 3 x), built as MXNet's documentation
# builds its examples (everything exported), but with the pre-C++11 std::string ABI, as
# libmxnet.so itself is: its mxnet::ext classes have the names of ours and another layout.
OTHER_EXTENSION = r'''
#include "lib_api.h"
#if MX_LIBRARY_VERSION >= 10
using namespace mxnet::ext;
#endif
typedef std::unordered_map<std::string, std::string> Attrs;

MXReturnValue parseAttrs(const Attrs&, int* num_in, int* num_out) {
  *num_in = 1; *num_out = 1; return MX_SUCCESS;
}
MXReturnValue inferType(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  (*out)[0] = (*in)[0]; return MX_SUCCESS;
}
MXReturnValue inferShape(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                         std::vector<std::vector<unsigned int>>* out) {
  (*out)[0] = (*in)[0]; return MX_SUCCESS;
}
MXReturnValue forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  const float* x = (*in)[0].data<float>();
  float* y = (*out)[0].data<float>();
  for (int64_t i = 0; i < (*in)[0].size(); ++i) y[i] = 3 * x[i];
  return MX_SUCCESS;
}
REGISTER_OP(_isolation_test_triple).setForward(forward, "cpu").setParseAttrs(parseAttrs)
    .setInferType(inferType).setInferShape(inferShape);
MXReturnValue initialize(int) { return MX_SUCCESS; }
'''

# Run in a fresh interpreter: load the other library before or after namsg's kernel, then one
# ARSG problem through the fused path, the NDArray path and the NumPy reference.
SCRIPT = r'''
import ctypes, os, sys
import mxnet as mx
import numpy as np
sys.path.insert(0, {tests!r})
from namsg import kernels
from cases import CASES_BY_ID
from harness import make_problem, run_mxnet, run_reference

def load_other():
    if {other!r} == 'libmxnet':
        # What importing horovod.mxnet does to the process: its library, which links
        # libmxnet.so, is loaded RTLD_GLOBAL, and libmxnet.so's symbols become global with it.
        ctypes.CDLL(mx.base._LIB._name, mode=ctypes.RTLD_GLOBAL)
    else:
        ctypes.CDLL({other!r}, mode=ctypes.RTLD_GLOBAL)
        mx.library.load({other!r}, verbose=False)
        y = mx.nd._internal._isolation_test_triple(mx.nd.array([1.0, -2.0]))
        assert y.asnumpy().tolist() == [3.0, -6.0], y

if {order!r} == 'before':
    load_other()
assert kernels.load(), kernels._state['error']
kernels._mapped_form({form!r})
kernels._state['form'] = {form!r}
if {order!r} == 'after':
    load_other()
case = CASES_BY_ID['everything']
weights, grads = make_problem(10, seed=5)
fused, _ = run_mxnet(case, weights, grads, fused=True)
plain, _ = run_mxnet(case, weights, grads, fused=False)
expected = run_reference(case, weights, grads)
for f, p, e in zip(fused, plain, expected):
    np.testing.assert_allclose(f, p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f, e, rtol=1e-5, atol=1e-5)
print('max relative error vs reference: %.3g' % max(
    float(np.max(np.abs(f - e) / np.maximum(np.abs(e), 1e-12))) for f, e in zip(fused, expected)))
# MXNet 1.7 and 1.8 close extension libraries at exit in a loop that reads freed memory; namsg's
# kernel ends the process when closed first, but here the other library may come first.
sys.stdout.flush()
os._exit(0)
'''


def _built_kernel(form=None):
    """The library of ``form`` (None: the one this process takes), built and loaded."""
    assert kernels.load(), kernels._state['error']
    if form is not None and form != kernels.fused_form():
        kernels._mapped_form(form)
        return kernels.library_path(form)
    return kernels._state['path']


# The forms this MXNet can take: the operator also where it stands in for the direct call.
FORMS = [form for form in kernels.library.fused_forms() if kernels.library._reason(form) is None]
requires_operator = pytest.mark.skipif(
    kernels.OPERATOR not in FORMS, reason='MXNet %s has no extension operator: %s' % (
        mx.__version__, kernels.library.unavailable_reason()))


@pytest.fixture(scope='module')
def other_extension(tmp_path_factory):
    """The second extension, compiled once for this module, with the implementation of the
    extension API that namsg's kernel uses here (MXNet's src/lib_api.cc, namsg's own where the
    package has none, or nothing where the header holds it all)."""
    folder = tmp_path_factory.mktemp('other_extension')
    source = folder / 'other.cc'
    source.write_text(OTHER_EXTENSION)
    output = folder / 'libother.so'
    result = subprocess.run(
        [os.environ.get('CXX', 'g++'), '-O1', '-std=c++14', '-fPIC', '-shared',
         '-D_GLIBCXX_USE_CXX11_ABI=0', '-I', str(MXNET_DIR / 'include' / 'mxnet'),
         '-I', str(MXNET_DIR / 'include'), str(source)] +
        [str(f) for f in kernels.library._api_sources()] + ['-o', str(output)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('order', ['before', 'after'])
@pytest.mark.parametrize('other', ['libmxnet', 'extension'])
def test_fused_update_is_right_beside_foreign_copies_of_the_extension_api(other, order, form,
                                                                          request):
    if other == 'extension' and kernels.OPERATOR not in FORMS:
        pytest.skip('MXNet %s cannot load another extension: %s' % (
            mx.__version__, kernels.library.unavailable_reason()))
    _built_kernel(form)
    target = ('libmxnet' if other == 'libmxnet' else
              str(request.getfixturevalue('other_extension')))
    script = SCRIPT.format(tests=str(HERE), other=target, order=order, form=form)
    env = dict(os.environ, NAMSG_FUSED='1')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, 'exit code %d (negative: killed by that signal):\n%s' % (
        result.returncode, (result.stdout + result.stderr)[-3000:])
    assert 'max relative error vs reference' in result.stdout


@requires_operator
def test_exports_are_what_mxnet_looks_up():
    """The names read from this MXNet's lib_api.h are the entry-point names that its library
    (libmxnet.so, whose loader looks them up) holds: _opCallDestroyOpState only from 1.9,
    _msgSize and _msgGet from 1.8."""
    data = Path(mx.base._LIB._name).read_bytes()
    known = set()
    for match in re.finditer(rb'(_(?:op|part|pass|msg)[A-Z][A-Za-z]*|initialize)\0', data):
        if not 0x20 <= data[match.start() - 1] < 0x7f:     # a whole string, not the end of one
            known.add(match.group(1).decode())
    assert set(kernels.entry_points()) == known


DECLARED = '''
extern "C" {
  /*! \\brief returns the version (a comment: _notAName()) */
  MX_INT_RET _opVersion();
  MX_VOID_RET _opRegGet(int idx, const char** name,
                        mxnet::ext::fcomp_t** forward_fp);  // a comment: _alsoNot()
#if defined(_WIN32)
  __declspec(dllexport) mxnet::ext::MXReturnValue __cdecl
#else
  mxnet::ext::MXReturnValue
#endif
  initialize(int version);
  MX_INT_RET _msgSize();
}  // extern "C"
#endif
'''

DEFINED = '''
extern "C" {
  MX_INT_RET _opVersion() {
    return MX_LIBRARY_VERSION;
  }
  MX_INT_RET _partCallSupportedOps(supportedOps_t supportedOps, int num_ids, int *ids) {
    std::vector<int> _ids(num_ids, 0);
    if (x) { _inner(ids); }
    return retval;
  }
  MXReturnValue initialize(int version);
}
#endif
'''


def test_entry_points_are_read_from_declarations_and_definitions():
    """1.8's and 1.9's lib_api.h declare the loader's functions, 1.7's defines them there:
    names used inside their bodies are not entry points."""
    assert kernels.entry_points(DECLARED) == ('_opVersion', '_opRegGet', 'initialize',
                                              '_msgSize')
    assert kernels.entry_points(DEFINED) == ('_opVersion', '_partCallSupportedOps',
                                             'initialize')


@pytest.mark.parametrize('form', FORMS)
def test_library_exports_nothing_else(form):
    """Its dynamic symbol table defines the loader's entry points (the operator's) or its two
    functions (the direct call's), and no C++ name."""
    result = subprocess.run(['nm', '-D', '--defined-only', str(_built_kernel(form))],
                            capture_output=True, text=True, check=True)
    defined = {line.split()[-1] for line in result.stdout.splitlines() if line.strip()}
    expected = kernels.entry_points() if form == kernels.OPERATOR else (
        'namsg_arsg_direct_abi', 'namsg_arsg_direct_update')
    assert defined == set(expected)


def test_cache_key_follows_the_flags(monkeypatch):
    here = kernels.library_path()
    monkeypatch.setattr(kernels.library, 'FLAGS',
                        [f for f in kernels.library.FLAGS if f != '-Wl,-Bsymbolic'])
    assert kernels.library_path() != here
