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
