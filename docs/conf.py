"""Sphinx configuration of namsg's documentation (``make docs`` builds it into docs/_build/html).

The build needs no network: cross-references to Python, NumPy and MXNet resolve through small
inventories that ``_ext/namsg_docs.py`` writes at each build, and the results tables are drawn
from the committed logs at build time by the same extension.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / '_ext'))

import namsg  # noqa: E402

project = 'namsg'
author = 'the namsg developers'
copyright = '2026, the namsg developers'
release = version = namsg.__version__

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.intersphinx',
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
    'myst_parser',
    'namsg_docs',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build']
root_doc = 'index'

# Every cross-reference must resolve (CI builds with -W -n).
nitpicky = True

myst_enable_extensions = ['colon_fence', 'deflist', 'dollarmath']
myst_heading_anchors = 3

autodoc_member_order = 'bysource'
autodoc_default_options = {'members': True}
autodoc_typehints = 'none'
# MXNet's docstrings of the methods it defines (create_state, ...) are MXNet's to document.
autodoc_inherit_docstrings = False
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_preprocess_types = True
# The short names docstrings use for MXNet's classes, as MXNet's own docstrings write them.
napoleon_type_aliases = {
    'gluon.Trainer': 'mxnet.gluon.Trainer', 'gluon.Block': 'mxnet.gluon.Block',
    'gluon.Parameter': 'mxnet.gluon.Parameter', 'Context': 'mxnet.context.Context',
    'NDArray': 'mxnet.ndarray.NDArray', 'Optimizer': 'mxnet.optimizer.Optimizer',
}
# Descriptions in numpydoc type fields that are not classes.
nitpick_ignore = [('py:class', word) for word in (
    'iterable', 'sequence', 'callable', 'file-like', 'file', 'path-like', 'optional',
    'array-like', 'any')]

# Offline: each inventory is a local file listing only the names these pages refer to, with the
# address of their page on the project's site (written at each build by _ext/namsg_docs.py).
INVENTORIES = Path(__file__).resolve().parent / '_build' / 'inventories'
intersphinx_mapping = {
    'python': ('https://docs.python.org/3', str(INVENTORIES / 'python.inv')),
    'numpy': ('https://numpy.org/doc/stable', str(INVENTORIES / 'numpy.inv')),
    'mxnet': ('https://mxnet.apache.org/versions/1.9.1/api/python/docs',
              str(INVENTORIES / 'mxnet.inv')),
}
intersphinx_disabled_reftypes = []

html_theme = 'furo'
html_title = 'namsg %s' % release
html_static_path = []
html_show_sourcelink = False
