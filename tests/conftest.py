"""Fixtures shared by the test modules."""

import pytest

from namsg import kernels

# The fused forms this MXNet can build: the direct call from MXNet 1.5.1 (not on mxnet-mkl 1.5,
# see kernels.library.direct_unavailable_reason), and the extension operator from 1.7 on.
BUILDABLE = [form for form in kernels.library.fused_forms()
             if kernels.library._reason(form) is None]


@pytest.fixture(params=BUILDABLE)
def each_fused_form(request, monkeypatch):
    """Each fused form this MXNet can build, in turn, mapped into this process and taken by the
    fused path (a process takes the first that loads: the direct call where it can; the other
    is tested through this). Tests that use it are skipped where neither can be built."""
    assert kernels.load(), kernels._state['error']
    kernels._mapped_form(request.param)
    monkeypatch.setitem(kernels._state, 'form', request.param)
    return request.param
