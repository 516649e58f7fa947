"""Rerun the paper's MNIST experiments (logistic regression and CNN); see --help."""

from namsg.experiments.cli import main

if __name__ == '__main__':
    main('mnist')
