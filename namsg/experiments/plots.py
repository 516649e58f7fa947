"""Figures and summary tables, drawn from the analysis or from the JSON-lines logs."""

import json
import os
import re

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from .. import dynamics  # noqa: E402
from .files import replacing, write_atomic  # noqa: E402
from .hparams import METHODS  # noqa: E402
from .compare import (comparison_markdown, config_now, protocol_now,  # noqa: E402
                      reproduction_criterion)
from .models import current_name  # noqa: E402

FIGURE1_MUS = (0.0, 0.001, 0.05, 0.1, 0.2, 0.4)
#: One colour per method in every plot (matplotlib's default colours, in METHODS' order); a
#: method of another name takes one of the colours left.
METHOD_COLOURS = dict(zip(METHODS, plt.rcParams['axes.prop_cycle'].by_key()['color']))
FIGURE1_RANGES = ((-0.003, 0.01), (-1.0, 20.0))


def _save(fig, path):
    """``fig`` as a PNG at ``path``, written whole or not at all (see files.replacing); closed."""
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def plot_figure1(path, beta=0.999, mus=FIGURE1_MUS, ranges=FIGURE1_RANGES, points=2001):
    """Redraw Figure 1 of the paper: the gain factor r_g and the error-variance limit lVar
    against tau for ``beta`` and each mu, over both tau ranges; saved as PNG at ``path``."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (low, high) in enumerate(ranges):
        taus = np.linspace(low, high, points)
        for mu in mus:
            label = 'mu=%g' % mu
            axes[0, col].plot(taus, dynamics.gain_factor(taus, beta, mu), label=label)
            lvar = dynamics.error_variance_limit(taus, beta, mu)
            axes[1, col].plot(taus, np.where(np.isfinite(lvar), lvar, np.nan), label=label)
        axes[0, col].set_title('(%s) gain factor r_g, beta=%g' % ('ac'[col], beta))
        axes[1, col].set_title('(%s) error-variance limit lVar, beta=%g' % ('bd'[col], beta))
        axes[1, col].set_yscale('log')
        for row in range(2):
            axes[row, col].set_xlabel('tau = alpha * lambda')
            axes[row, col].grid(True, alpha=0.3)
            axes[row, col].legend(fontsize=8)
    axes[0, 1].set_ylim(0.95, 1.01)   # the wide range: r_g > 1 shoots up past divergence
    fig.tight_layout()
    _save(fig, path)


# --- results of the experiments, from their logs ---------------------------------------------

#: Training and validation sizes of the full data sets.
FULL_SIZES = {'mnist': (60000, 10000), 'cifar10': (50000, 10000)}


def load_runs(log_dir, headers=False, unfinished=False):
    """{setting: {method: [records of each seed]}} from ``log_dir/<setting>/<method>/*.jsonl``;
    only runs that finished their protocol are kept, unless ``unfinished``. With ``headers``,
    each seed is a (header, records) pair. Logs of every version are read (older headers hold
    the data's path under ``data``)."""
    from pathlib import Path
    from .logs import read_log
    runs = {}
    for path in sorted(Path(log_dir).glob('*/*/*.jsonl')):
        header, records = read_log(path)
        if not records or (len(records) < header['protocol']['epochs'] and not unfinished):
            continue
        runs.setdefault(header['protocol']['setting'], {}).setdefault(
            header['method'], []).append((header, records) if headers else records)
    return runs


def describe_data(header, note=None):
    """Which data a run used, for a title or a caption: sample, full set or subset, the sizes
    and the data's digest (its fingerprint, where the log holds one; ``note``, e.g.
    'JPEG-recompressed copy', is added). Never where the data lay: a path names a folder of
    the machine that made the run, and the same data anywhere is the same data."""
    source = header.get('data_source') or header.get('data')
    fingerprint = header.get('data') if isinstance(header.get('data'), dict) else None
    sizes = (header.get('train_size'), header.get('test_size'))
    dataset = header['protocol']['dataset']
    kind = ('embedded sample' if isinstance(source, str) and 'sample' in source else
            'full set' if sizes == FULL_SIZES.get(dataset) else 'subset')
    return '%s%s, %s: %s training / %s validation images%s' % (
        'MNIST' if dataset == 'mnist' else 'CIFAR-10', '' if note is None else ' ' + note, kind,
        format(sizes[0], ','), format(sizes[1], ','),
        ', digest %s' % fingerprint['sha256'] if fingerprint else '')


def describe_budget(protocol):
    """The budget of a (logged) protocol: its scale and epochs."""
    full = round(protocol['epochs'] / protocol['scale']) if protocol['scale'] else '?'
    return 'budget: --scale %g (%d of %s epochs)' % (protocol['scale'], protocol['epochs'], full)


def event_positions(protocol, records, boosted):
    """{label: x} of the events to mark, x counted in epochs done, as the plots' x axis is (the
    point of epoch k at x = k, when k epochs are done): the boost when an ARSGB run is drawn,
    and the step-size drop (within its epoch, by iteration). The boost applies from the start
    of the protocol's ``boost_epoch`` (the record of that epoch is the first boosted one), so
    it lies at ``boost_epoch - 1`` epochs done, and its label says so in the axis' terms."""
    events = {}
    if boosted:
        done = protocol['boost_epoch'] - 1
        events['ARSGB boost after %d epoch%s (epoch %d on)' % (
            done, '' if done == 1 else 's', protocol['boost_epoch'])] = done
    drop = protocol.get('lr_drop_iteration')
    if drop is not None:
        done = 0
        for r in records:
            if r['iteration'] > drop:
                events['step size / %g after iteration %d' % (protocol['lr_drop_factor'],
                                                               drop)] = \
                    r['epoch'] - 1 + (drop - done) / (r['iteration'] - done)
                break
            done = r['iteration']
    return events


def _curves(seed_records, key):
    length = min(len(r) for r in seed_records)
    return np.array([[rec[key] for rec in r[:length]] for r in seed_records])


def plot_setting(method_runs, title, path, reference_runs=None, events=None, caption=None):
    """Training loss (log scale) and validation accuracy against epoch: the mean over seeds
    with a band from the lowest to the highest seed, a marker at every epoch (a one-epoch run
    is a point), each method in its colour of METHOD_COLOURS. ``reference_runs`` (same form)
    are drawn dashed in the method's colour, for the methods of ``method_runs`` only (the
    others would crowd out the runs drawn); ``events`` ({label: x in epochs done}) as vertical
    lines; ``caption`` under the panels. Saved as PNG at ``path``; with ``path`` None the figure
    is returned instead."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 5))
    groups = [(method_runs, '-', 'o', '')]
    reference_runs = {m: r for m, r in (reference_runs or {}).items() if m in method_runs}
    if reference_runs:
        groups.append((reference_runs, '--', 'x', ' ref'))
    spare = [c for c in plt.rcParams['axes.prop_cycle'].by_key()['color']
             if c not in METHOD_COLOURS.values()]
    colours = dict(METHOD_COLOURS, **{m: spare[i % len(spare)] for i, m in enumerate(
        m for m in method_runs if m not in METHOD_COLOURS)})
    for runs, style, marker, suffix in groups:
        for method, seed_records in runs.items():
            colour = colours[method]
            epochs = np.arange(1, _curves(seed_records, 'train_loss').shape[1] + 1)
            for ax, key in ((loss_ax, 'train_loss'), (acc_ax, 'val_acc')):
                values = _curves(seed_records, key)
                ax.plot(epochs, values.mean(axis=0), style, marker=marker, markersize=4,
                        color=colour, label='%s%s (%d)' % (method, suffix, len(seed_records)))
                ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=colour,
                                alpha=0.12)
    for i, (label, x) in enumerate(sorted((events or {}).items(), key=lambda e: e[1])):
        for ax in (loss_ax, acc_ax):
            ax.axvline(x, color='0.3', linestyle=':' if i % 2 else '-.', linewidth=1,
                       label=label)
    loss_ax.set_yscale('log')
    loss_ax.set_ylabel('training loss (mean over the epoch)')
    acc_ax.set_ylabel('validation accuracy')
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel('epochs done')
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, title='method (seeds)', title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    if caption:
        import textwrap
        lines = [w for part in caption.split('\n') for w in textwrap.wrap(part, 180)]
        fig.text(0.01, 0.01, '\n'.join(lines), fontsize=8, va='bottom')
    fig.tight_layout(rect=(0, 0.03 * len(lines) if caption else 0, 1, 1))
    if path is None:        # the caller inspects the figure, then closes it
        return fig
    _save(fig, path)
    return None


def summary_rows(method_runs, reference='ADAM'):
    """Per method: seeds, final training loss, best and final validation accuracy (mean, std
    over seeds), and the first epoch at which its mean training loss reaches the reference method's
    final mean training loss (None if never, or without the reference)."""
    target = None
    if reference in method_runs:
        target = _curves(method_runs[reference], 'train_loss').mean(axis=0)[-1]
    rows = []
    for method, seed_records in method_runs.items():
        loss = _curves(seed_records, 'train_loss')
        acc = _curves(seed_records, 'val_acc')
        best_acc = acc.max(axis=1)
        reached = None
        if target is not None:
            hits = np.flatnonzero(loss.mean(axis=0) <= target)
            reached = int(hits[0]) + 1 if hits.size else None
        rows.append(dict(method=method, seeds=len(seed_records),
                         final_loss=loss[:, -1].mean(), final_loss_std=loss[:, -1].std(),
                         best_acc=best_acc.mean(), best_acc_std=best_acc.std(),
                         final_acc=acc[:, -1].mean(), epochs_to_reference=reached))
    return rows


def _mean_std(mean, std, seeds):
    # A spread over one seed is no spread: print the value alone.
    return '%.4f' % mean if seeds == 1 else '%.4f +- %.4f' % (mean, std)


def summary_markdown(method_runs, reference='ADAM'):
    lines = ['| method | seeds | final training loss | best validation accuracy | '
             'epochs to reach %s\'s final training loss |' % reference,
             '|---|---|---|---|---|']
    for r in summary_rows(method_runs, reference):
        lines.append('| %s | %d | %s | %s | %s |' % (
            r['method'], r['seeds'], _mean_std(r['final_loss'], r['final_loss_std'], r['seeds']),
            _mean_std(r['best_acc'], r['best_acc_std'], r['seeds']),
            '-' if r['epochs_to_reference'] is None else r['epochs_to_reference']))
    return '\n'.join(lines) + '\n'


#: Under the CNN's plot when it ran on the embedded sample (measured: see the README).
SAMPLE_CNN_CAPTION = (
    'Sample: 16 iterations an epoch. Validation uses BatchNorm\'s running statistics '
    '(momentum 0.9, updated once an iteration), which lag the fast-changing weights of the '
    'first epochs: ARSG\'s validation accuracy of 0.1-0.4 in epochs 1-2 becomes 0.94-0.96 for '
    'the same weights with the statistics recomputed (see the README). Not a defect; on full '
    'MNIST an epoch is 235 iterations.')


def _not_compared(header, reference_header):
    """Why no run here is compared run by run with the reference runs of the same protocol,
    from a header of each."""
    if not isinstance(reference_header.get('data'), dict):
        return ('Not compared run by run: the reference logs record no fingerprint of their '
                'data (they were written before logs held one), so no run here can be shown '
                'to be the same run.')
    if reference_header.get('data') != header.get('data'):
        return ('Not compared run by run: the reference runs were trained on other data (%s; '
                'here: %s).' % (describe_data(reference_header), describe_data(header)))
    ours, theirs = config_now(header), config_now(reference_header)
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)
                    and k not in ('run', 'seed', 'method', 'optimizer', 'optimizer_params',
                                  'boost_epoch'))
    if differ:
        return 'Not compared run by run: the configurations differ in %s.' % ', '.join(differ)
    return 'Not compared run by run: no run here has its seed among the reference runs.'


def _shown(folder):
    """``folder`` as the report names it: relative to the working directory or to the checkout
    holding this package where it lies in one, else its name alone (a whole path names a
    folder of one machine, and the plots are committed)."""
    from pathlib import Path
    resolved = Path(folder).resolve()
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        try:
            return str(resolved.relative_to(root.resolve()))
        except ValueError:
            continue
    return resolved.name


def _comparable(header, other):
    """Reference runs are drawn beside new ones only under the same protocol: the same network
    (by its current name, see :func:`~namsg.experiments.compare.protocol_now`) and budget."""
    return protocol_now(header['protocol']) == protocol_now(other['protocol'])


#: The fields of a protocol that its scale sets (see hparams.Protocol.scaled): said with it.
_SCALED = ('epochs', 'boost_epoch', 'lr_drop_iteration')


def _epochs(count):
    return '%d epoch%s' % (count, '' if count == 1 else 's')


def _model(name):
    now = current_name(name)
    return now if now == name else '%s (logged as %s)' % (now, name)


def protocol_differences(theirs, ours):
    """What differs between the logged protocols ``theirs`` (a reference run's) and ``ours``,
    in words, e.g. 'model cifar_resnet20_v1 (logged as resnet20) there, resnet20_b3 here; scale
    0.0375 there (3 epochs), 0.125 here (10 epochs)': the network first, then the budget (the
    epochs, boost epoch and step-size drop it sets are not said again), then any other field.
    '' when they are the same protocol."""
    theirs_now, ours_now = protocol_now(theirs), protocol_now(ours)
    rescaled = theirs_now.get('scale') != ours_now.get('scale')
    parts = []
    for key in ['model', 'scale'] + [k for k in dict(ours_now, **theirs_now)
                                     if k not in ('model', 'scale')]:
        there, here = theirs_now.get(key), ours_now.get(key)
        if there == here or (rescaled and key in _SCALED):
            continue
        if key == 'model':
            parts.append('model %s there, %s here' % (_model(theirs['model']),
                                                      _model(ours['model'])))
        elif key == 'scale':
            parts.append('scale %s there (%s), %s here (%s)' % (
                _value(there), _epochs(theirs['epochs']), _value(here), _epochs(ours['epochs'])))
        else:
            parts.append('%s %s there, %s here' % (key, _value(there), _value(here)))
    return '; '.join(parts)


def _value(value):
    return '%g' % value if isinstance(value, float) else str(value)


def _why_none(header, setting, runs):
    """Why ``runs`` (load_runs' form: one reference folder's finished runs) hold none of the
    protocol of ``header``'s run of ``setting``, in words."""
    protocols = {}
    for pairs in runs.get(setting, {}).values():
        for other, _ in pairs:
            protocols.setdefault(json.dumps(other['protocol'], sort_keys=True),
                                 other['protocol'])
    if not protocols:
        return 'no finished runs of %s there' % setting
    differences = [protocol_differences(p, header['protocol']) for p in protocols.values()]
    if len(differences) == 1:
        return differences[0]
    return 'runs of %d protocols there, none this one (%s)' % (len(differences),
                                                               ' | '.join(differences))


def _no_reference(header, setting, references):
    """The report's line for a run of ``setting`` that no reference run (``references``:
    [(folder, its runs)]) shares the protocol of, saying why for each folder."""
    if len(references) == 1:
        folder, runs = references[0]
        return ['No reference runs of the same protocol in `%s`: %s.'
                % (_shown(folder), _why_none(header, setting, runs)), '']
    named = ['`%s`' % _shown(folder) for folder, _ in references]
    return (['No reference runs of the same protocol in %s or %s:' % (', '.join(named[:-1]),
                                                                       named[-1]), ''] +
            ['- `%s`: %s.' % (_shown(folder), _why_none(header, setting, runs))
             for folder, runs in references] + [''])


def _reference_pairs(header, setting, references):
    """(folder, {method: [(header, records)]}) of the reference folder whose runs of ``setting``
    share ``header``'s protocol, the one with the most such runs (the first on a tie); None
    when no folder has any."""
    best, most = None, 0
    for folder, runs in references:
        pairs = {m: [(h, r) for h, r in runs.get(setting, {}).get(m, [])
                     if _comparable(h, header)] for m in METHODS}
        count = sum(map(len, pairs.values()))
        if count > most:
            best, most = (folder, pairs), count
    return best


def write_report(log_dir, out_dir=None, reference='ADAM', reference_dir=None, data_note=None):
    """For every setting with finished runs under ``log_dir``: ``<setting>.png`` and a section
    of ``summary.md`` in ``out_dir`` (default: ``log_dir``), with reference runs of the same
    protocol beside them. ``reference_dir``: a folder of reference runs (e.g. the committed
    logs/mnist) or a list of them; each setting is compared with the folder that holds the most
    runs of its protocol, and where none holds any the report says what differs.
    Returns the summary text."""
    from pathlib import Path
    out_dir = Path(out_dir or log_dir)
    sections = []
    found = load_runs(log_dir, headers=True)
    folders = ([] if reference_dir is None else [reference_dir]
               if isinstance(reference_dir, (str, os.PathLike)) else list(reference_dir))
    references = [(folder, load_runs(folder, headers=True)) for folder in folders]
    for setting, method_runs in sorted(found.items()):
        header = next(iter(method_runs.values()))[0][0]
        ordered = {m: [r for _, r in method_runs[m]] for m in METHODS if m in method_runs}
        ref_folder, ref_pairs = _reference_pairs(header, setting, references) or (None, {})
        ref_runs = {m: [r for _, r in pairs] for m, pairs in ref_pairs.items() if pairs}
        records = next(iter(ordered.values()))[0]
        title = '%s, %s\ndata: %s' % (setting, describe_budget(header['protocol']),
                                      describe_data(header, data_note))
        caption = None
        if setting == 'mnist_cnn' and 'sample' in describe_data(header):
            caption = SAMPLE_CNN_CAPTION
        if ref_runs:
            ref_header = next(pairs[0][0] for pairs in ref_pairs.values() if pairs)
            caption = '\n'.join(filter(None, [caption, 'dashed: reference runs in %s (data: %s)'
                                              % (_shown(ref_folder),
                                                 describe_data(ref_header))]))
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_setting(ordered, title, out_dir / ('%s.png' % setting), ref_runs,
                     event_positions(header['protocol'], records, 'ARSGB' in ordered),
                     caption)
        sections += ['## %s' % setting, '', '%s; data: %s' % (
            describe_budget(header['protocol']), describe_data(header, data_note)), '',
            summary_markdown(ordered, reference)]
        if ref_runs:
            sections += ['Reference runs of the same protocol in `%s`:' % _shown(ref_folder), '',
                         summary_markdown(ref_runs, reference)]
            same = comparison_markdown(method_runs, ref_pairs)
            if same:
                sections += ['The same runs here and in the reference (the same configuration '
                             'and data), judged by what a run on another machine reproduces: '
                             '%s.' % reproduction_criterion(header['protocol']['model']), '',
                             same]
            else:
                sections += [_not_compared(header, ref_header), '']
        elif references:
            sections += _no_reference(header, setting, references)
    summary = '\n'.join(sections)
    if sections:
        write_atomic(out_dir / 'summary.md', summary)
    return summary


# --- the README's results tables, drawn from the committed logs ----------------------------------

#: A results block in a Markdown file: ``<!-- results[ METRIC]: SOURCE ... -->``, the table,
#: then ``<!-- /results -->``. Each SOURCE is ``LOG_DIR:SETTING=LABEL`` (LOG_DIR relative to the
#: file's folder; underscores in LABEL print as spaces). Without METRIC the table has a row per
#: method and a group of columns (every metric) per source; with METRIC (one of
#: RESULT_METRICS) a row per source and a column per method.
RESULTS_BLOCK = re.compile(r'(<!-- results(?: (?P<metric>\w+))?: (?P<spec>[^>]*?) -->\n)'
                           r'(?P<table>.*?)(?P<end><!-- /results -->)', re.S)

#: The metrics of a results table, by key: the column title.
RESULT_METRICS = {'final_loss': 'final train loss', 'best_acc': 'best val acc',
                  'final_acc': 'final val acc', 'to_reference': "epochs to ADAM's final loss",
                  'before_drop': 'train loss before the drop'}


def parse_results_source(text):
    """``LOG_DIR:SETTING=LABEL`` -> (log_dir, setting, label with underscores as spaces)."""
    where, _, label = text.partition('=')
    log_dir, _, setting = where.rpartition(':')
    if not (log_dir and setting and label):
        raise ValueError('results source %r: expected LOG_DIR:SETTING=LABEL' % text)
    return log_dir, setting, label.replace('_', ' ')


def _loss_before_drop(protocol, records):
    """(training loss, epoch) of the last epoch that ended before the step-size drop (what
    fast mode minimizes), or None when the drop is not within the logged epochs."""
    drop = protocol.get('lr_drop_iteration')
    before = [r for r in records if drop is not None and r['iteration'] <= drop]
    if not before or len(before) == len(records):
        return None
    return before[-1]['train_loss'], before[-1]['epoch']


def source_results(log_dir, setting, reference='ADAM'):
    """The results of the runs of ``setting`` under ``log_dir``, runs in progress included:
    (protocol, seed counts, {method: {metric: cell text}}) with the metrics of RESULT_METRICS
    (means over seeds; 'before_drop' where the protocol has a step-size drop, '-' for runs that
    have not reached it yet; 'to_reference' says where the ``reference`` method was not run, or
    has not finished, so that there is no final loss to reach). Raises
    ValueError when there are no such runs or they were made under different protocols."""
    runs = load_runs(log_dir, headers=True, unfinished=True).get(setting, {})
    if not runs:
        raise ValueError('%s holds no runs of %s' % (log_dir, setting))
    protocols = {json.dumps(h['protocol'], sort_keys=True) for pairs in runs.values()
                 for h, _ in pairs}
    if len(protocols) > 1:
        raise ValueError('%s: the runs of %s were made under %d different protocols'
                         % (log_dir, setting, len(protocols)))
    protocol = json.loads(protocols.pop())
    epochs = protocol['epochs']
    done = {m: min(len(r) for _, r in pairs) for m, pairs in runs.items()}
    finished = {m: [r for _, r in pairs] for m, pairs in runs.items() if done[m] == epochs}
    rows = {r['method']: r for r in summary_rows(finished, reference)}
    # From the protocol: runs in progress that have not reached the drop yet still get a cell.
    with_drop = protocol.get('lr_drop_iteration') is not None
    cells = {}
    for method, pairs in runs.items():
        if method in rows:
            row = rows[method]
            reached = row['epochs_to_reference']
            cell = {key: '%.4f' % row[key] for key in ('final_loss', 'best_acc', 'final_acc')}
            cell['to_reference'] = (str(reached) if reached is not None else
                                    'never' if reference in rows else
                                    'no %s run' % reference if reference not in runs else
                                    # Its run in progress: no final loss to reach yet.
                                    'no final %s loss yet (%s at %d of %d epochs)'
                                    % (reference, reference, done[reference], epochs))
        else:               # in progress: what it reached so far
            row = summary_rows({method: [r[:done[method]] for _, r in pairs]})[0]
            cell = {key: '%.4f after %d of %d epochs' % (row[key], done[method], epochs)
                    for key in ('final_loss', 'best_acc', 'final_acc')}
            cell['to_reference'] = '-'
        if with_drop:
            before = [_loss_before_drop(protocol, r) for _, r in pairs]
            cell['before_drop'] = '-' if None in before else '%.4f (epoch %d)' % (
                float(np.mean([loss for loss, _ in before])), before[0][1])
        cells[method] = cell
    return protocol, sorted({len(pairs) for pairs in runs.values()}), cells


def _describe_source(label, protocol, seeds):
    return '%s (%d epochs, %s seed%s)' % (label, protocol['epochs'], '/'.join(map(str, seeds)),
                                          '' if seeds == [1] else 's')


def results_markdown(sources, root='.', metric=None, reference='ADAM'):
    """A Markdown table of the runs in ``sources`` ([(log_dir, setting, label)], log_dir
    relative to ``root``), drawn from their logs by :func:`source_results`. Without ``metric``:
    a row per method, a group of columns per source. With ``metric`` (a key of RESULT_METRICS):
    a row per source, a column per method. Where a source is CIFAR-10 fine mode, the paper's
    reported best validation accuracy comes first (a column, or with ``metric='best_acc'`` a
    row). Methods that a source did not run say so."""
    from pathlib import Path
    from .hparams import PAPER_BEST_VAL_ACC
    if metric is not None and metric not in RESULT_METRICS:
        raise ValueError('results metric %r: choose one of %s'
                         % (metric, ', '.join(RESULT_METRICS)))
    paper = next((PAPER_BEST_VAL_ACC[s] for _, s, _ in sources if s in PAPER_BEST_VAL_ACC), {})
    named = []
    if paper and metric in (None, 'best_acc'):
        named.append(('paper (80 epochs, mean +- std of 5 runs)',
                      {m: dict(best_acc='%.4f +- %.4f' % value) for m, value in paper.items()}))
    for log_dir, setting, label in sources:
        protocol, seeds, cells = source_results(Path(root) / log_dir, setting, reference)
        named.append((_describe_source(label, protocol, seeds), cells))
    methods = [m for m in METHODS if any(m in cells for _, cells in named)]

    def row(cells):
        return '| %s |' % ' | '.join(cells)
    if metric is not None:
        lines = [row(['%s, here unless said' % RESULT_METRICS[metric]] + methods),
                 row(['---'] * (len(methods) + 1))]
        for name, cells in named:
            lines.append(row([name] + [cells.get(m, {}).get(metric, 'not run')
                                       for m in methods]))
        return '\n'.join(lines) + '\n'
    columns = [(name, key) for name, cells in named for key in RESULT_METRICS
               if any(key in c for c in cells.values())]
    lines = [row(['method'] + ['%s: %s' % (name, RESULT_METRICS[key]) for name, key in columns]),
             row(['---'] * (len(columns) + 1))]
    for method in methods:
        lines.append(row([method] + [dict(named)[name].get(method, {}).get(key, 'not run')
                                     for name, key in columns]))
    return '\n'.join(lines) + '\n'


def grid_markdown(spec, root='.'):
    """The grid-search table (:func:`namsg.experiments.grid.summary_table`, without the first
    stage, which leaves no log) of ``spec`` = ``LOG_DIR:SETTING``, from every point's log of
    every method found there."""
    from pathlib import Path
    from . import grid
    log_dir, _, setting = spec.rpartition(':')
    folder = Path(root) / log_dir / setting
    methods = [m for m in METHODS if (folder / m).is_dir()]
    if not methods:
        raise ValueError('grid source %r: no method folders in %s' % (spec, folder))
    return grid.summary_table(setting, {m: (grid.rows_from_logs(Path(root) / log_dir, setting,
                                                                m), None)
                                        for m in methods}, first_stage=False)


def fill_results_blocks(text, root='.'):
    """``text`` (Markdown) with every results block's table redrawn from its logs; a block
    ``<!-- results grid: LOG_DIR:SETTING -->`` holds a grid search's table
    (:func:`grid_markdown`)."""
    def redraw(match):
        if match.group('metric') == 'grid':
            table = grid_markdown(match.group('spec').strip(), root)
        else:
            table = results_markdown([parse_results_source(s)
                                      for s in match.group('spec').split()],
                                     root, match.group('metric'))
        return match.group(1) + table + match.group('end')
    return RESULTS_BLOCK.sub(redraw, text)
