"""MKLDNN (oneDNN) layouts before a fused call: where MXNet runs MKLDNN (the MXNet 1.7 to 1.9
wheels, ``mxnet-mkl`` 1.6), both fused forms take their arrays' data only after the engine has
left none of them in an MKLDNN blocked layout.

An MKLDNN convolution or dense layer run for inference reorders its weight into such a layout
in place. MXNet 1.9 hands an in-place extension operator that array as it is, which fails ("We
can't generate TBlob for MKLDNN data"); 1.7 and 1.8 hand it the same way as an output, and as an
input a reordered temporary copy, in which an update of a mutable input would be lost. The
direct call cannot ask for the data inside the engine's run of the update: MXNDArrayGetData
would wait for the engine to reorder the array, that is for the update itself. (The states are
never in such a layout: only the fused update and the NDArray path touch them.)

MKLDNN's inference convolution does not reorder at once: while it runs (a read of the weight) it
pushes the reorder as a new write. So the call waits for every pending read and write (the
convolution has then run and pushed its reorder), then for that reorder, then has
MXNDArrayGetData reorder the arrays back; nothing else can be pushed before the update, from
this same thread. Waiting for writes only lost the race when the convolution ran between that
wait and the update. One wait for the whole engine (a reorder pushed while it waits is counted
too) costs one round trip per update call; a wait per array cost one each, 5 ms for ResNet-20's
65 weights, twice adam's whole step. The direct call takes the data itself, in one C loop, after
this wait (see ``arsg_direct.cc``); the operator's call reorders its weights here.
"""

import ctypes

import mxnet as mx
from mxnet.base import _LIB, check_call


def _wait_for_layouts():
    """Wait for MXNet's engine so that no array is, or is about to be, left in an MKLDNN
    blocked layout (see the module's docstring); after it each array's own wait returns at
    once, and MXNDArrayGetData reorders an array back to the default layout at once."""
    mx.nd.waitall()


def _reorder_to_default(arrays):
    """Leave none of ``arrays`` in an MKLDNN blocked layout (see ``_wait_for_layouts``):
    MXNDArrayGetData reorders one that is back to the default layout."""
    _wait_for_layouts()
    for array in arrays:
        array.wait_to_read()
        check_call(_LIB.MXNDArrayGetData(array.handle, ctypes.byref(ctypes.c_void_p())))
