"""Rerun the paper's CIFAR-10 experiment (ResNet-20, fine and fast modes); see --help."""

from namsg.experiments.cli import main

if __name__ == '__main__':
    main('cifar10')
