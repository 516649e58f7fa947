"""The end of every state of namsg's optimizers: the parameter's update count and its name, and
what is checked when states come from a file.

A state is a tuple of NDArrays, MXNet's convention (nested: ``(master, state)`` with
``multi_precision``; ``(slow, inner_state, ...)`` for Lookahead), whose last element is the pair
``(t, name)``:

* ``t``: int64, shape (1,), on the weight's context: the parameter's update count after the
  state's last update (0: not updated yet). MXNet keeps the counts in the optimizer, and
  ``Module.save_optimizer_states`` saves the states without it; carried in the state, the count
  is saved, loaded and moved between devices (``Updater.sync_state_context``) with it. int64
  holds every count exactly (float32 would stop at 2**24 updates).
* ``name``: uint8, shape (:data:`NAME_BYTES`,): the parameter's name in UTF-8, zero-padded
  (longer names keep their first bytes and a hash, see :func:`encode_name`); all zeros where the
  optimizer was given no names (a bare ``Updater``). MXNet matches loaded states to parameters by
  position; the name tells when they are loaded onto another parameter (:func:`adopt_states`).

The optimizer's count stays MXNet's own (``_index_update_count``): the pair is read once, when a
state that this optimizer did not make is first used (a loaded or moved state), and ``t`` is
written after each update. That write is one MXNet operation per optimizer call, not one per
parameter: the ``t`` of the states an optimizer makes are views into one int64 buffer per
device, and a run of them with the same count is set at once.

States saved by earlier versions load: namsg 0.1.0's without a count (``(m, v, vhat)``), and
those that ended in an :class:`UpdateCount` object instead of the pair.
"""

import hashlib
import inspect
import operator
import re
import sys
import warnings
import weakref

import numpy

import mxnet as mx
from mxnet import ndarray as nd
from mxnet.ndarray import NDArray

__all__ = ['NAME_BYTES', 'StatesRenamedWarning', 'UpdateCount', 'split_count', 'new_trailer',
           'adopt_states', 'resume_counts', 'store_counts', 'check_trainer_states',
           'restored_update_counts', 'continue_update_counts', 'same_objects', 'remembered',
           'remember', 'count_runs', 'write_count_runs']

#: Bytes of a parameter's name that a state keeps (the ``name`` array's length).
NAME_BYTES = 128
COUNT_DTYPE = numpy.int64
# How many counts one buffer holds: a model's parameters usually fit in one, so that one write
# sets them all.
_CHUNK = 512

# The update counts each optimizer object had when this process first counted with it, per
# parameter: what it was unpickled with (Trainer.load_states, a kvstore server), or nothing for
# a new one. Kept outside the object so that it is never pickled: a count restored here is from
# the file, not from a device of this process.
_RESTORED_COUNTS = weakref.WeakKeyDictionary()


def restored_update_counts(optimizer):
    """{index: count} that ``optimizer`` was restored with (highest over the devices it was
    saved from), recorded on its first use in this process."""
    counts = _RESTORED_COUNTS.get(optimizer)
    if counts is None:
        counts = {}
        for device_counts in optimizer._all_index_update_counts.values():
            for index, count in device_counts.items():
                counts[index] = max(count, counts.get(index, count))
        _RESTORED_COUNTS[optimizer] = counts
    return counts


def continue_update_counts(optimizer, indices):
    """Start the count of each of ``indices`` that is new on the current device from the count
    ``optimizer`` was restored with, instead of MXNet's ``begin_num_update``: the count belongs
    to the parameter, and a checkpoint may be loaded on another device than it was saved on."""
    restored = restored_update_counts(optimizer)
    for idx in indices:
        if idx not in optimizer._index_update_count and idx in restored:
            optimizer._index_update_count[idx] = restored[idx]


class StatesRenamedWarning(UserWarning):
    """Optimizer states were loaded onto parameters of other names than they were saved for
    (MXNet matches them by position). Turn it into an error with
    ``warnings.simplefilter('error', namsg.StatesRenamedWarning)``."""


class UpdateCount:
    """The update count of a state as namsg saved it before the count became an NDArray: the
    last element of the state tuple, ``value`` the count after the state's last update (None
    before the first). Only read (and kept up to date) for such states; pickled by its qualified
    name ``namsg._base.UpdateCount``, under which those files find it."""

    def __init__(self, value=None):
        self.value = value

    def __repr__(self):
        return 'UpdateCount(%r)' % (self.value,)


def split_count(state, length=None):
    """``(slots, count)``: the state tuple without its last element ``count``, the pair
    ``(t, name)`` (or an :class:`UpdateCount`, in states saved by earlier versions); ``count`` is
    None for a state that has neither (saved by namsg 0.1.0). ``length``: the number of slots of
    the optimizer's states, for one whose 0.1.0 states may end in a tuple of two arrays
    (Lookahead's ``(slow, inner_state)``): a state of that length has no count."""
    if isinstance(state, tuple) and state and len(state) != length and _is_count(state[-1]):
        return state[:-1], state[-1]
    return state, None


def _is_count(last):
    """Whether ``last``, a state's last element, is its count: the pair ``(t, name)`` or an
    :class:`UpdateCount`."""
    return isinstance(last, UpdateCount) or (type(last) is tuple and len(last) == 2
                                             and isinstance(last[0], NDArray)
                                             and isinstance(last[1], NDArray))


def check_precision(optimizer, owner, index, dtype, state):
    """Raise ValueError for a loaded ``state`` of parameter ``index`` (weight ``dtype``) saved
    for another precision: a float32 master copy there where ``optimizer`` keeps none, or
    missing where it keeps one (MXNet's ``multi_precision``: ``(master, state)`` for float16
    weights only), or arrays of another dtype than the weight's (float16 or float32 for a
    float16 weight). Such states come from the other ``multi_precision``, or from the model in
    another dtype. Unchecked, they failed in the update with a message about something else (a
    layout, a shape, a ``TypeError``, MXNet's ``Incompatible attr``) or, for Lookahead around
    MXNet's sgd, took the master copy for the slow weights. States of namsg 0.1.0, which end in
    no count, cannot tell whether they hold a master copy and pass that check. ``owner``: the
    optimizer that knows the parameters' names (Lookahead's inner one)."""
    dtype = numpy.dtype(dtype)
    wrapped = (type(state) is tuple and len(state) == 2 and isinstance(state[0], NDArray)
               and type(state[1]) is tuple and bool(state[1]) and _is_count(state[1][-1]))
    keeps = bool(optimizer.multi_precision) and dtype == numpy.float16
    if wrapped != keeps and (wrapped or (type(state) is tuple and state
                                         and _is_count(state[-1]))):
        raise ValueError(
            'the optimizer state of parameter %r (index %r) %s a float32 master copy of its '
            'weight, which %s(multi_precision=%r) %s for a %s weight (MXNet keeps one with '
            'multi_precision=True for float16 weights only): load the states with the '
            'multi_precision and parameter dtype they were saved with, or start without them'
            % (param_name(owner, index), index, 'holds' if wrapped else 'lacks',
               type(optimizer).__name__, optimizer.multi_precision,
               'keeps' if keeps else 'does not keep', dtype.name))
    # float16 weights have float32 states and master copies (and float16 states in MXNet's
    # own optimizers, inside Lookahead); every other weight has states of its own dtype.
    fits = (numpy.float16, numpy.float32) if dtype == numpy.float16 else (dtype,)
    other = next((a.dtype for a in _arrays(state) if numpy.issubdtype(a.dtype, numpy.floating)
                  and a.dtype not in fits), None)
    if other is not None:
        raise ValueError(
            'the optimizer state of parameter %r (index %r) holds %s arrays, saved for a weight '
            'of another dtype: this weight is %s. Load the states onto the model in the dtype '
            'it was saved in (cast it before loading), or start without them'
            % (param_name(owner, index), index, numpy.dtype(other).name, dtype.name))


def encode_name(name):
    """``name`` as a state keeps it: its UTF-8 bytes, zero-padded to :data:`NAME_BYTES`; a longer
    name keeps its first bytes, ``~`` and 16 hex digits of its SHA-256, so that two long names
    that differ only at the end still differ."""
    raw = name.encode('utf-8')
    if len(raw) > NAME_BYTES:
        raw = raw[:NAME_BYTES - 17] + b'~' + hashlib.sha256(raw).hexdigest()[:16].encode()
    return raw.ljust(NAME_BYTES, b'\0')


def _decode_name(raw):
    return raw.rstrip(b'\0').decode('utf-8', 'replace')


def param_name(optimizer, index):
    """The name of parameter ``index`` as ``optimizer`` knows it: Gluon's Parameter (Trainer),
    ``idx2name`` (Module), the index itself where it is a name (a Module's kvstore), else ''."""
    param = optimizer.param_dict.get(index)
    if param is not None:
        return param.name
    if index in optimizer.idx2name:
        return optimizer.idx2name[index]
    return index if isinstance(index, str) else ''


class _Book:
    """What one optimizer knows of the states it counts for: ``known``, id of a state's marker
    (its ``t``, its UpdateCount, or for a 0.1.0 state its first array) -> (marker, buffer,
    offset), the buffer and offset of a ``t`` that it made (else None); ``buffers``, context ->
    [the int64 buffer new counts are cut from, how many it has given out]; ``memo``, what the
    update calls found out about their arrays (see :func:`remembered`)."""

    def __init__(self):
        self.known = {}
        self.buffers = {}
        self.memo = {}


# Outside the optimizers, so that it is never pickled, and it goes with them. The markers are
# held here (NDArrays take no weak references), which keeps their ids from being reused.
_BOOKS = weakref.WeakKeyDictionary()


def _book(optimizer):
    book = _BOOKS.get(optimizer)
    if book is None:
        book = _BOOKS[optimizer] = _Book()
    return book


# -- what an update call finds out about its arrays, kept for the next call over the same ones --
#
# MXNet's Updater hands an optimizer the same objects at every step: the state tuples it keeps
# (replaced when states are loaded, moved or made for a new parameter) and, in Gluon, each
# Parameter's weight and gradient arrays. What is derived from those objects alone (the states
# split from their counts, their layout checked, the counts' places in their buffers, whether
# the arrays can take the fused operator) is kept per optimizer and list of indices, with the
# objects it was derived from, and reused while a call hands over the very same objects: a state
# loaded or moved, a new parameter, a weight or gradient replaced is another object, and the
# work is done again. NDArrays take no weak references, so the last call's lists are held (one
# per list of indices): an array replaced stays alive until the next call over its index.

#: How many lists of indices an optimizer keeps what it found for (skip_nonfinite_grad can
#: make many sub-lists); past it all are forgotten and found again.
_MEMO_SIZE = 64


def same_objects(these, those):
    """Whether the sequences ``these`` and ``those`` hold the very same objects, in order."""
    return len(these) == len(those) and all(map(operator.is_, these, those))


def remembered(optimizer, key):
    """What :func:`remember` kept for ``optimizer`` under ``key``, or None."""
    return _book(optimizer).memo.get(key)


def remember(optimizer, key, value):
    """Keep ``value`` for ``optimizer`` under ``key`` (outside the optimizer: never pickled)."""
    memo = _book(optimizer).memo
    if len(memo) >= _MEMO_SIZE and key not in memo:
        memo.clear()
    memo[key] = value
    return value


def count_runs(optimizer, counts):
    """The places of ``counts`` (pairs ``(t, name)``, every ``t`` one that ``optimizer`` made:
    a view into one of its count buffers) as ``[(buffer, begin, end)]``, the runs of adjacent
    places in buffer order: what :func:`_write_counts` writes when all counts have one value.
    None if a ``t`` is not one that ``optimizer`` made (a loaded state's, or a count that is
    not a pair)."""
    known = _book(optimizer).known
    places = []
    for count in counts:
        if type(count) is not tuple:
            return None
        entry = known.get(id(count[0]))
        if entry is None or entry[0] is not count[0] or entry[1] is None:
            return None
        places.append((id(entry[1]), entry[2], entry[1]))
    places.sort(key=lambda place: place[:2])
    runs = []
    for _, offset, buffer in places:
        if runs and runs[-1][0] is buffer and runs[-1][2] == offset:
            runs[-1][2] += 1
        else:
            runs.append([buffer, offset, offset + 1])
    return [tuple(run) for run in runs]


def write_count_runs(runs, value):
    """Set every count of ``runs`` (from :func:`count_runs`) to ``value``: the operations that
    :func:`store_counts` makes for those counts when they all have that value."""
    for buffer, begin, end in runs:
        # The scalar is a double: counts are exact up to 2**53.
        nd._internal._slice_assign_scalar(buffer, scalar=float(value), begin=(begin,),
                                          end=(end,), out=buffer)


def new_trailer(optimizer, index, weight):
    """The pair ``(t, name)`` ending a new state for parameter ``index`` of ``weight`` (on its
    context), its count kept by ``optimizer``."""
    book = _book(optimizer)
    context = weight.context
    buffer = book.buffers.get(context)
    if buffer is None or buffer[1] == _CHUNK:
        buffer = book.buffers[context] = [nd.zeros((_CHUNK,), context, dtype=COUNT_DTYPE), 0]
    offset = buffer[1]
    buffer[1] += 1
    count = buffer[0][offset:offset + 1]           # a view: one write sets many counts
    book.known[id(count)] = (count, buffer[0], offset)
    name = nd.array(numpy.frombuffer(encode_name(param_name(optimizer, index)), numpy.uint8),
                    ctx=context, dtype=numpy.uint8)
    return count, name


def _write_counts(optimizer, counts, values):
    """Set each NDArray ``t`` of ``counts`` to its value of ``values``, in as few operations as
    the layout allows."""
    known = _book(optimizer).known
    made, loose = [], []
    for count, value in zip(counts, values):
        _, buffer, offset = known[id(count)]
        if buffer is None:
            loose.append((count, value))
        else:
            made.append((id(buffer), offset, buffer, value))
    # In buffer order, whatever order the caller lists them in: the counts of states made one
    # after the other (Lookahead's and its inner optimizer's, interleaved) then make one run.
    made.sort(key=lambda entry: entry[:2])
    runs = []
    for _, offset, buffer, value in made:
        if runs and runs[-1][0] is buffer and runs[-1][2] == offset and runs[-1][3] == value:
            runs[-1][2] += 1
        else:
            runs.append([buffer, offset, offset + 1, value])
    for buffer, begin, end, value in runs:
        write_count_runs([(buffer, begin, end)], value)
    if len(loose) == 1:
        count, value = loose[0]
        nd._internal._slice_assign_scalar(count, scalar=float(value), begin=(0,), end=(1,),
                                          out=count)
    elif loose:
        # Loaded states, each its own array (all of one call are on one device): one split of
        # an array of the values writes them all.
        arrays, values = zip(*loose)
        context = arrays[0].context
        if len(set(values)) == 1:
            source = nd._internal._full(shape=(len(arrays),), ctx=context, dtype=COUNT_DTYPE,
                                        value=float(values[0]))
        else:
            source = nd.array(values, ctx=mx.cpu(), dtype=COUNT_DTYPE).as_in_context(context)
        nd.split(source, num_outputs=len(arrays), axis=0, out=list(arrays))


def store_counts(optimizer, indices, counts):
    """After ``optimizer`` counted an update of ``indices``: write each count into its state's
    ``t`` (``counts`` from :func:`split_count`)."""
    arrays, values = [], []
    for index, count in zip(indices, counts):
        if isinstance(count, UpdateCount):
            count.value = optimizer._index_update_count[index]
        elif count is not None:
            arrays.append(count[0])
            values.append(optimizer._index_update_count[index])
    if arrays:
        _write_counts(optimizer, arrays, values)


def resume_counts(optimizer, indices, counts):
    """Before ``optimizer`` counts an update of ``indices``: continue the count each state carries
    (``counts`` from :func:`split_count`), from where the state was saved, instead of MXNet's
    ``begin_num_update``."""
    unknown = []
    warned = False
    known = _book(optimizer).known
    for index, count in zip(indices, counts):
        if count is None:
            # A state saved without its count: the counts of a restored optimizer
            # (Trainer.save_states) or begin_num_update take over, as they did in namsg 0.1.0.
            if not (warned or index in optimizer._index_update_count
                    or optimizer.begin_num_update
                    or index in restored_update_counts(optimizer)):
                warned = True
                warnings.warn(
                    'optimizer states without their update counts (saved by namsg 0.1.0, e.g. '
                    'by Module.save_optimizer_states): %s counts its updates from '
                    'begin_num_update=0 again, which restarts what depends on the step t (bias '
                    'corrections, warm-up, Lookahead\'s k-cycle, lr_scheduler). Pass '
                    'begin_num_update=<number of updates done> with these states.'
                    % type(optimizer).__name__, stacklevel=3)
        elif isinstance(count, UpdateCount):
            if count.value is not None and optimizer._index_update_count.get(index) != count.value:
                optimizer._index_update_count[index] = count.value
        elif id(count[0]) not in known:
            # Not seen by adopt_states (update called directly): its count and name only.
            unknown.append((index, None, (), count))
    if unknown:
        _adopt(optimizer, unknown)


def _marker(slots, count):
    if type(count) is tuple:
        return count[0]
    if count is not None:
        return count
    return next((s for s in slots if isinstance(s, NDArray)), None)


def _arrays(state):
    """The NDArrays of ``state`` (nested tuples), the pairs (t, name) of inner states left out."""
    if isinstance(state, NDArray):
        yield state
    elif type(state) is tuple:
        for part in split_count(state)[0]:
            yield from _arrays(part)


def adopt_states(optimizer, indices, weights, states, owner=None, length=None):
    """Before ``optimizer`` updates ``weights`` with ``states`` (as the Updater hands them to
    ``update_multi_precision``): check each state it has not made nor seen yet (loaded, or moved
    to another device) against its parameter, and continue the count the state carries.
    ``owner``: the optimizer that keeps the counts (Lookahead's inner one); ``length`` as for
    :func:`split_count`.

    Raises ValueError, before anything is updated, for a state whose arrays do not have the
    weight's shape (a state loaded onto another parameter), naming both parameters. Warns
    (:class:`StatesRenamedWarning`) for states saved for parameters of other names, and takes
    the current names into them."""
    owner = optimizer if owner is None else owner
    known = _book(owner).known
    multi_precision = optimizer.multi_precision and weights[0].dtype == numpy.float16
    # A state once made, seen or adopted stays known (markers are never forgotten): the same
    # state objects, read the same way, have nothing left to check.
    key = ('adopted', tuple(indices), multi_precision, length)
    seen = remembered(optimizer, key)
    if seen is not None and same_objects(states, seen):
        return
    unknown = []
    for index, weight, state in zip(indices, weights, states):
        # The usual case, at every step: a state this optimizer made or saw, known by its t.
        inner = state[1] if multi_precision and type(state) is tuple and len(state) == 2 \
            else state
        last = inner[-1] if type(inner) is tuple and inner else None
        if type(last) is tuple and len(last) == 2:
            entry = known.get(id(last[0]))
            if entry is not None and entry[0] is last[0]:
                continue
        check_precision(optimizer, owner, index, weight.dtype, state)
        master = ()
        if multi_precision:
            master, state = state[:1], state[1]
        arrays, count = split_count(state, length)
        arrays = master + arrays
        marker = _marker(arrays, count)
        entry = known.get(id(marker))
        if marker is not None and (entry is None or entry[0] is not marker):
            unknown.append((index, weight.shape, arrays, count))
    if unknown:
        _adopt(owner, unknown)
    # A copy: update_multi_precision takes the master copies out of the list it hands here.
    remember(optimizer, key, list(states))


def _inspect(owner, states, rename):
    """Check ``states``, a list of (index, shape the state must have or None, its arrays, its
    count), against the parameters ``owner`` knows. Raises ValueError for states of another
    shape; warns for other names, and ``rename(index, count, current name)`` if given. Returns
    [(index, the count the state was saved with or None)]."""
    wrong, renamed, counts = [], [], []
    for index, shape, arrays, count in states:
        saved_count, saved_name = None, None
        if type(count) is tuple:
            t, name = count
            if t.dtype != COUNT_DTYPE or t.shape != (1,) or name.dtype != numpy.uint8 \
                    or name.shape != (NAME_BYTES,):
                raise ValueError(
                    'the optimizer state of parameter %r ends in a pair of arrays of %s %s and '
                    '%s %s, not in namsg\'s update count (int64, (1,)) and parameter name '
                    '(uint8, (%d,)): these states were not made by namsg\'s optimizers; start '
                    'without them' % (param_name(owner, index), t.dtype.__name__, t.shape,
                                      name.dtype.__name__, name.shape, NAME_BYTES))
            saved_count, saved_name = int(t.asscalar()), bytes(name.asnumpy())
        elif count is not None:
            saved_count = count.value
        current = param_name(owner, index)
        if shape is not None and any(a.shape != shape for a in _arrays(arrays)):
            other = next(a.shape for a in _arrays(arrays) if a.shape != shape)
            wrong.append('the state saved for %s has arrays of shape %s; parameter %r (index '
                         '%r) has shape %s' % (_saved(saved_name, index), other, current,
                                               index, shape))
        elif saved_name is not None and current and saved_name != encode_name(current) \
                and saved_name.strip(b'\0'):
            renamed.append((index, count, _decode_name(saved_name), current))
        counts.append((index, saved_count))
    if wrong:
        raise ValueError(
            'optimizer states that do not fit the parameters they are loaded onto (MXNet '
            'matches states to parameters by position): %s. Load the states saved with this '
            'model, or train without loading states (they start afresh)' % '; '.join(wrong))
    if renamed and not _renumbered([(saved, _decode_name(encode_name(current)))
                                    for _, _, saved, current in renamed]):
        warnings.warn(StatesRenamedWarning(
            'optimizer states loaded onto parameters of other names than they were saved for '
            '(MXNet matches states to parameters by position, not by name): %s. If the model '
            'was only renamed, this is harmless, and the states now carry the new names; if '
            'its parameters were built in another order, each got another one\'s states: load '
            'states saved with this model.' % ', '.join(
                '%r -> %r' % (saved, current) for _, _, saved, current in renamed)),
            stacklevel=4)
    for index, count, _, current in renamed:
        if rename is not None:
            rename(index, count, current)
    return counts


def _number_key(name):
    """``name`` split into text and numbers, compared as numbers ('dense10' > 'dense9')."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r'(\d+)', name)]


def _renumbered(pairs):
    """Whether (saved, current) name ``pairs`` differ only as Gluon's and MXNet's automatic names
    do when a model is built again in one process: the counters in them moved (``dense0_`` is
    ``dense3_`` now), the order they put the names in did not. Blocks built in another order
    swap the numbers, which does not pass."""
    if any(re.sub(r'\d+', '#', saved) != re.sub(r'\d+', '#', current)
           for saved, current in pairs):
        return False
    by_saved = sorted(range(len(pairs)), key=lambda i: _number_key(pairs[i][0]))
    by_current = sorted(range(len(pairs)), key=lambda i: _number_key(pairs[i][1]))
    return by_saved == by_current


def _saved(saved_name, index):
    if saved_name is None:
        return 'index %r (saved by an earlier namsg, without names)' % (index,)
    if not saved_name.strip(b'\0'):
        return 'index %r (saved without a name)' % (index,)
    return '%r' % _decode_name(saved_name)


def _write_name(arrays, count, name):
    """Write ``name`` into the pair ``count`` and into those of the inner states in ``arrays``
    (Lookahead's inner optimizer's), so that they all carry the parameter's new name."""
    for part in arrays:
        if type(part) is tuple:
            _write_name(*split_count(part), name)
    if type(count) is tuple:
        count[1][:] = numpy.frombuffer(encode_name(name), numpy.uint8)


def _adopt(owner, states):
    arrays_of = {index: arrays for index, _, arrays, _ in states}
    counts = _inspect(owner, states,
                      lambda index, count, name: _write_name(arrays_of[index], count, name))
    known = _book(owner).known
    for (index, saved_count), (_, _, arrays, count) in zip(counts, states):
        if type(count) is tuple and saved_count:
            owner._index_update_count[index] = saved_count
        marker = _marker(arrays, count)
        if marker is not None:
            known[id(marker)] = (marker, None, None)


def _loading_trainer():
    """The gluon.Trainer whose ``load_states`` runs on this thread (it assigns the restored
    optimizer its ``param_dict`` last), or None. MXNet gives no hook after it loads states; the
    frames tell (``load_states`` of MXNet 1.5 to 1.9, or a wrapper of it)."""
    code = inspect.unwrap(mx.gluon.Trainer.load_states).__code__
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is code:
            return frame.f_locals.get('self')
        frame = frame.f_back
    return None


def check_trainer_states(optimizer, params):
    """When ``Trainer.load_states`` hands the restored ``optimizer`` its parameters (``params``,
    its new ``param_dict``): check the states it loaded against them, all at once and before
    any update, as :func:`adopt_states` does (the update may run in a kvstore callback, whose
    errors MXNet only prints). Names taken over are written into the states of every device."""
    if not params:
        return
    trainer = _loading_trainer()
    if trainer is None or trainer._optimizer is not optimizer:
        return
    updaters = [trainer._kvstore._updater] if trainer._update_on_kvstore else trainer._updaters
    length = getattr(type(optimizer), 'STATE_LENGTH', None)

    def parts(index, state, param):
        check_precision(optimizer, optimizer, index, param.dtype, state)
        master = ()
        if optimizer.multi_precision and numpy.dtype(param.dtype) == numpy.float16:
            master, state = state[:1], state[1]
        slots, count = split_count(state, length)
        return master + slots, count

    def rename(index, _, name):
        for updater in updaters:
            _write_name(*parts(index, updater.states[index], params[index]), name)

    states = []
    for index, state in updaters[0].states.items():
        param = params.get(index)
        if param is not None:
            shape = param.shape if param.shape and all(d > 0 for d in param.shape) else None
            states.append((index, shape) + parts(index, state, param))
    _inspect(optimizer, states, rename)
