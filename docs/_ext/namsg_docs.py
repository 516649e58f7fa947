"""Sphinx extension of namsg's documentation: results tables drawn from the committed logs at
build time, and the offline cross-reference inventories.

Directives (in MyST pages, as ```` ```{results-table} ````):

``results-table``
    One argument per source, ``LOG_DIR:SETTING=LABEL`` (LOG_DIR relative to the repository's
    root, underscores in LABEL print as spaces), as in the README's ``<!-- results -->`` blocks;
    option ``:metric:`` (a key of :data:`namsg.experiments.plots.RESULT_METRICS`) for a row per
    source and a column per method. The table is
    :func:`namsg.experiments.plots.results_markdown`, the code behind
    ``scripts/results_tables.py``, so the docs and the README cannot disagree.
``grid-table``
    One argument, ``LOG_DIR:SETTING``: B.5's grid search drawn from every point's log
    (:func:`namsg.experiments.plots.grid_markdown`).
``table-a1``
    No argument: the paper's Table A1 as the scripts use it
    (:func:`namsg.experiments.hparams.table_a1_markdown`).
``mxnet-arguments``
    One argument, a setting: what each method's Table A1 tuple becomes in MXNet
    (:func:`namsg.experiments.hparams.mxnet_arguments_markdown`).

A source that holds no runs fails the build (an error, not a warning), naming the source.

The API pages' descriptions: a value that a package re-exports takes its ``#:`` comment from the
module that defines it, and a value or NamedTuple field without a description of its own is a
warning (:func:`describe_own_values`), where autodoc would show its type's docstring.
"""

import sys
import zlib
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docstrings import prepare_docstring
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]
LOGGER = logging.getLogger(__name__)

#: Names from outside the package that the pages and docstrings refer to, by inventory:
#: {inventory: [(name, domain:role, page#anchor)]}. Offline builds cannot fetch the projects'
#: own inventories, so these small ones are written at each build; add a name here when a
#: docstring starts referring to it (the nitpicky build says which).
EXTERNAL = {
    'python': [
        ('True', 'py:data', 'library/constants.html#True'),
        ('False', 'py:data', 'library/constants.html#False'),
        ('None', 'py:data', 'library/constants.html#None'),
        ('pathlib.Path', 'py:class', 'library/pathlib.html#pathlib.Path'),
        ('logging.Logger', 'py:class', 'library/logging.html#logging.Logger'),
        ('KeyboardInterrupt', 'py:exception', 'library/exceptions.html#KeyboardInterrupt'),
        ('RuntimeWarning', 'py:exception', 'library/exceptions.html#RuntimeWarning'),
        ('UserWarning', 'py:exception', 'library/exceptions.html#UserWarning'),
    ],
    'numpy': [
        ('numpy.ndarray', 'py:class', 'reference/generated/numpy.ndarray.html#numpy.ndarray'),
        ('numpy.random.Generator', 'py:class',
         'reference/random/generator.html#numpy.random.Generator'),
    ],
    'mxnet': [(name, 'py:class', 'api/%s#%s' % (page, name)) for name, page in (
        ('mxnet.optimizer.Optimizer', 'optimizer/index.html'),
        ('mxnet.optimizer.Updater', 'optimizer/index.html'),
        ('mxnet.lr_scheduler.LRScheduler', 'lr_scheduler/index.html'),
        ('mxnet.gluon.Trainer', 'gluon/trainer.html'),
        ('mxnet.gluon.Block', 'gluon/block.html'),
        ('mxnet.gluon.HybridBlock', 'gluon/block.html'),
        ('mxnet.gluon.Parameter', 'gluon/parameter.html'),
        ('mxnet.ndarray.NDArray', 'ndarray/ndarray.html'),
        ('mxnet.context.Context', 'mxnet/context/index.html'),
        ('mxnet.kvstore.KVStoreBase', 'kvstore/index.html'),
        ('mxnet.kvstore.KVStore', 'kvstore/index.html'),
        ('mxnet.module.Module', 'module/index.html'),
    )] + [('mxnet.base.MXNetError', 'py:exception',
           'api/mxnet/base/index.html#mxnet.base.MXNetError')],
}


def _write_inventory(path, project, entries):
    """An ``objects.inv`` (Sphinx inventory version 2) holding ``entries``."""
    header = ('# Sphinx inventory version 2\n# Project: %s\n# Version: \n'
              '# The remainder of this file is compressed using zlib.\n' % project)
    body = ''.join('%s %s 1 %s -\n' % (name, role, uri) for name, role, uri in entries)
    path.write_bytes(header.encode() + zlib.compress(body.encode()))


def write_inventories(app, config):
    """Write the inventories that conf.py's intersphinx_mapping names, before intersphinx
    reads them."""
    for project, (_, location) in config.intersphinx_mapping.items():
        path = Path(location if isinstance(location, str) else location[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_inventory(path, project, EXTERNAL[project])


class _MarkdownTable(SphinxDirective):
    has_content = False

    def markdown(self):
        raise NotImplementedError

    def run(self):
        try:
            text = self.markdown()
        except ValueError as e:
            raise self.error('%s: %s' % (self.name, e))
        container = nodes.container(classes=['results-table'])
        self.state.nested_parse(StringList(text.splitlines(), source=self.get_source_info()[0]),
                                self.content_offset, container)
        return [container]


class ResultsTable(_MarkdownTable):
    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {'metric': str}

    def markdown(self):
        from namsg.experiments.plots import parse_results_source, results_markdown
        sources = [parse_results_source(s) for s in self.arguments[0].split()]
        return results_markdown(sources, root=ROOT, metric=self.options.get('metric'))


class GridTable(_MarkdownTable):
    required_arguments = 1

    def markdown(self):
        from namsg.experiments.plots import grid_markdown
        return grid_markdown(self.arguments[0], root=ROOT)


class TableA1(_MarkdownTable):
    def markdown(self):
        from namsg.experiments.hparams import table_a1_markdown
        return table_a1_markdown()


class MXNetArguments(_MarkdownTable):
    required_arguments = 1

    def markdown(self):
        from namsg.experiments.hparams import mxnet_arguments_markdown
        return mxnet_arguments_markdown(self.arguments[0])


def _prose_attribute_docstring(self):
    """Napoleon reads the first line of an attribute's docstring as ``type: description``; the
    package's ``#:`` comments are prose ("Table A1 of the supplementary: the hyper-parameters
    ..."), which it turned into a type. Parsed here as a description only (sections inside it
    still are, as napoleon's own method parses them)."""
    return self._format_field('', '', self.__class__(self._dedent(self._consume_to_end()),
                                                     self._config).lines())


def _defining_module_comment(package, name, value):
    """The ``#:`` comment of ``name`` in the submodule of ``package`` that defines it (the
    package re-exports it), or None."""
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith(package + '.') or getattr(module, name, None) is not value:
            continue
        try:
            analyzer = ModuleAnalyzer.for_module(module_name)
            analyzer.analyze()
        except PycodeError:
            continue
        comment = analyzer.attr_docs.get(('', name))
        if comment:
            return list(comment)
    return None


def describe_own_values(app, what, name, obj, options, lines):
    """A module-level value's description is its ``#:`` comment, which autodoc reads in the
    module it documents the value under; where that module has none it shows the docstring of
    the value's type (``str(object='') -> str``, "Built-in immutable sequence."). For a value a
    package re-exports (``namsg.PRECONDITIONERS``) the comment is read where the value is
    defined (``namsg/arsg.py``); a value without one, and a NamedTuple field without one
    ("Alias for field number N"), is a warning, so the build (-W) names it."""
    type_doc = type(obj).__doc__
    if what == 'data' and type_doc and lines[:len(prepare_docstring(type_doc))] == \
            prepare_docstring(type_doc):
        package, _, attribute = name.rpartition('.')
        comment = _defining_module_comment(package, attribute, obj)
        lines[:] = comment or []
        if comment is None:
            LOGGER.warning('%s has no description: give it a "#:" comment where it is '
                           'assigned', name, type='namsg', subtype='undocumented')
    elif what in ('attribute', 'property') and lines and \
            lines[0].startswith('Alias for field number'):
        lines[:] = []
        LOGGER.warning('%s has no description: give the NamedTuple field a "#:" comment',
                       name, type='namsg', subtype='undocumented')


def setup(app):
    from sphinx.ext.napoleon import docstring
    docstring.GoogleDocstring._parse_attribute_docstring = _prose_attribute_docstring
    app.connect('config-inited', write_inventories)
    # Before napoleon (priority 500), which parses the description this sets.
    app.connect('autodoc-process-docstring', describe_own_values, priority=400)
    app.add_directive('results-table', ResultsTable)
    app.add_directive('grid-table', GridTable)
    app.add_directive('table-a1', TableA1)
    app.add_directive('mxnet-arguments', MXNetArguments)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
