"""Reruns against reference runs: which of them are the same run (configuration and data),
and whether a rerun reproduces its reference run as far as a run on another machine can."""

import json

from .models import current_name
from .runs import config_of


#: Models that a rerun on another machine reproduces to float rounding, with the largest
#: relative difference in training loss, over the epochs, that still counts as reproduced
#: (measured on MNIST's logistic regression, 20 epochs: 1.8e-7 between oneDNN's AVX2 and
#: AVX-512 kernels, 1.8e-5 with MXNet's oneDNN off, where seeds differ by about 5e-3). Networks
#: with convolutions are reproduced only within the reference's seed-to-seed spread (see
#: :func:`reproduction_criterion`).
EXACT_MODELS = {'logreg': 1e-4}


def reproduction_criterion(model):
    """What a rerun of ``model`` (a protocol's model) on another machine can reproduce of its
    reference run, in words for the report.

    Logistic regression (EXACT_MODELS): the training loss of every epoch, to a relative
    tolerance. A network with convolutions: only its final training loss, within the spread
    of the reference's final training losses over its seeds.

    Why (measured with MXNet 1.9.1 on the MNIST CNN, one epoch): two runs with the same
    instruction set and thread count are bit-identical, but MXNet's oneDNN picks its
    convolution kernels by the CPU's instruction set (``DNNL_MAX_CPU_ISA=AVX2``, what a CPU
    without AVX-512 runs, changes the first forward pass by 6e-7, relative) and splits the
    backward pass's sums over the batch by thread (``OMP_NUM_THREADS=2`` instead of 1 changes
    the first gradients by 6e-7). Training amplifies such rounding differences: the losses of
    two runs part by 1e-2 within 100 iterations, sooner where BatchNorm cancels a parameter
    (the biases before it), whose gradient is then rounding alone and which Adam-like
    optimizers step by the full step size all the same. After ten epochs the final training
    loss differs by a few percent, as it does between seeds.
    """
    if model in EXACT_MODELS:
        return ('logistic regression is reproduced to float rounding on any machine: a rerun '
                'matches its reference run when its training loss differs by at most %g '
                '(relative) in every epoch' % EXACT_MODELS[model])
    return ('a network with convolutions is not reproduced bit for bit on another CPU or with '
            'another thread count (oneDNN chooses its kernels by both, and training amplifies '
            'their rounding differences): a rerun matches its reference run when its final '
            'training loss differs by no more than the spread of the reference\'s final '
            'training losses over its seeds')


def protocol_now(protocol):
    """A logged ``protocol`` (a dict) as a log written now would record it: its model under
    its current name (:func:`~namsg.experiments.models.current_name`), so that a rerun of an
    earlier log's network is of the same protocol."""
    return dict(protocol, model=current_name(protocol['model']))


def config_now(header):
    """The configuration of a log's ``header`` (:func:`~namsg.experiments.runs.config_of`) as
    JSON reads it back, its protocol as :func:`protocol_now` gives it."""
    return json.loads(json.dumps(dict(config_of(header), protocol=protocol_now(
        header['protocol']))))


def same_run(header, other):
    """Whether the logs of ``header`` and ``other`` are of the same run: the same configuration
    (protocol, method, seed, optimizer and hyper-parameters, data fingerprint, contexts,
    kvstore; the model by its current name, see :func:`protocol_now`), whatever the machine,
    versions, command or data path (as a run is resumed only by its own configuration). A log
    without a data fingerprint (written before logs held one) is the same run as none: what
    its data were cannot be told."""
    return (isinstance(header.get('data'), dict) and isinstance(other.get('data'), dict)
            and config_now(header) == config_now(other))


def _verdict(model, worst, change, spread):
    """Whether a rerun reproduces its reference run (see reproduction_criterion): ``worst``
    the largest relative difference in training loss over the epochs, ``change`` the absolute
    difference in final training loss, ``spread`` the reference's seed-to-seed range of final
    training losses (None with one seed)."""
    if worst == 0:
        return 'yes: identical'
    if model in EXACT_MODELS:
        tolerance = EXACT_MODELS[model]
        return ('yes: within %g' % tolerance if worst <= tolerance else
                'no: differs by more than %g' % tolerance)
    if spread is None:
        return 'cannot tell: one reference seed, no seed-to-seed spread'
    within = change <= spread
    return '%s: final loss differs by %.1e, %s the seed-to-seed spread %.1e' % (
        'yes' if within else 'no', change, 'within' if within else 'more than', spread)


def comparison_markdown(runs, reference_runs):
    """Per run found in both ``runs`` and ``reference_runs`` ({method: [(header, records)]})
    as the same run (:func:`same_run`: the same configuration and data): the final training
    loss of each, the largest relative difference in training loss over the epochs, and
    whether the rerun reproduces the reference run as a run on another machine can
    (:func:`reproduction_criterion`). Runs on other data are never paired. '' when no run
    is found in both."""
    lines = ['| method | seed | final training loss | reference\'s | largest relative '
             'difference over the epochs | reproduced? |', '|---|---|---|---|---|---|']
    for method, pairs in runs.items():
        references = reference_runs.get(method, [])
        for header, records in pairs:
            matches = [r for h, r in references if same_run(header, h)]
            if not matches:
                continue
            other = matches[0]
            worst = max(abs(a['train_loss'] - b['train_loss']) / abs(b['train_loss'])
                        for a, b in zip(records, other))
            # The seeds of the reference run's configuration: the spread a rerun may differ by.
            finals = [r[-1]['train_loss'] for h, r in references
                      if same_run(dict(header, seed=h['seed'], run=h['run']), h)]
            spread = max(finals) - min(finals) if len(finals) > 1 else None
            lines.append('| %s | %d | %.5f | %.5f | %.1e | %s |' % (
                method, header['seed'], records[-1]['train_loss'], other[-1]['train_loss'],
                worst, _verdict(header['protocol']['model'], worst,
                                abs(records[-1]['train_loss'] - other[-1]['train_loss']),
                                spread)))
    return '\n'.join(lines) + '\n' if len(lines) > 2 else ''
