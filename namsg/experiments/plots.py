"""Figures and summary tables, drawn from the analysis or from the JSON-lines logs."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .. import dynamics  # noqa: E402

FIGURE1_MUS = (0.0, 0.001, 0.05, 0.1, 0.2, 0.4)
FIGURE1_RANGES = ((-0.003, 0.01), (-1.0, 20.0))


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
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- results of the experiments, from their logs ---------------------------------------------

def load_runs(log_dir):
    """{setting: {method: [records of each seed]}} from ``log_dir/<setting>/<method>/*.jsonl``;
    only runs that finished their protocol are kept."""
    from pathlib import Path
    from .train import read_log
    runs = {}
    for path in sorted(Path(log_dir).glob('*/*/*.jsonl')):
        header, records = read_log(path)
        if len(records) < header['protocol']['epochs']:
            continue
        runs.setdefault(header['protocol']['setting'], {}).setdefault(
            header['method'], []).append(records)
    return runs


def _curves(seed_records, key):
    length = min(len(r) for r in seed_records)
    return np.array([[rec[key] for rec in r[:length]] for r in seed_records])


def plot_setting(method_runs, title, path):
    """Training loss (log scale) and validation accuracy against epoch: the mean over seeds
    with a band from the lowest to the highest seed."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for method, seed_records in method_runs.items():
        epochs = np.arange(1, _curves(seed_records, 'train_loss').shape[1] + 1)
        for ax, key in ((loss_ax, 'train_loss'), (acc_ax, 'val_acc')):
            values = _curves(seed_records, key)
            line, = ax.plot(epochs, values.mean(axis=0), label='%s (%d)' % (method,
                                                                           len(seed_records)))
            ax.fill_between(epochs, values.min(axis=0), values.max(axis=0),
                            color=line.get_color(), alpha=0.15)
    loss_ax.set_yscale('log')
    loss_ax.set_ylabel('training loss (mean over the epoch)')
    acc_ax.set_ylabel('validation accuracy')
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel('epoch')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title='method (seeds)')
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_rows(method_runs, reference='ADAM'):
    """Per method: seeds, final training loss and best validation accuracy (mean, std over
    seeds), and the first epoch at which its mean training loss reaches the reference method's
    final mean training loss (None if never, or without the reference)."""
    target = None
    if reference in method_runs:
        target = _curves(method_runs[reference], 'train_loss').mean(axis=0)[-1]
    rows = []
    for method, seed_records in method_runs.items():
        loss = _curves(seed_records, 'train_loss')
        best_acc = _curves(seed_records, 'val_acc').max(axis=1)
        reached = None
        if target is not None:
            hits = np.flatnonzero(loss.mean(axis=0) <= target)
            reached = int(hits[0]) + 1 if hits.size else None
        rows.append(dict(method=method, seeds=len(seed_records),
                         final_loss=loss[:, -1].mean(), final_loss_std=loss[:, -1].std(),
                         best_acc=best_acc.mean(), best_acc_std=best_acc.std(),
                         epochs_to_reference=reached))
    return rows


def summary_markdown(method_runs, reference='ADAM'):
    lines = ['| method | seeds | final training loss | best validation accuracy | '
             'epochs to reach %s\'s final training loss |' % reference,
             '|---|---|---|---|---|']
    for r in summary_rows(method_runs, reference):
        lines.append('| %s | %d | %.4f +- %.4f | %.4f +- %.4f | %s |' % (
            r['method'], r['seeds'], r['final_loss'], r['final_loss_std'], r['best_acc'],
            r['best_acc_std'], '-' if r['epochs_to_reference'] is None
            else r['epochs_to_reference']))
    return '\n'.join(lines) + '\n'


def write_report(log_dir, out_dir=None, reference='ADAM'):
    """For every setting with finished runs under ``log_dir``: ``<setting>.png`` and a section
    of ``summary.md`` in ``out_dir`` (default: ``log_dir``). Returns the summary text."""
    from pathlib import Path
    from .hparams import METHODS
    out_dir = Path(out_dir or log_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for setting, method_runs in sorted(load_runs(log_dir).items()):
        ordered = {m: method_runs[m] for m in METHODS if m in method_runs}
        plot_setting(ordered, setting, out_dir / ('%s.png' % setting))
        sections += ['## %s' % setting, '', summary_markdown(ordered, reference)]
    summary = '\n'.join(sections)
    if sections:
        (out_dir / 'summary.md').write_text(summary)
    return summary
