"""The documentation: every Python example in the README, the docs and the docstrings runs, the
site builds with warnings as errors (every cross-reference resolves), and its HTML has no broken
internal link or missing image."""

import builtins
import doctest
import html
import html.parser
import importlib
import pkgutil
import os
import re
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / 'docs'
PAGES = [ROOT / 'README.md'] + sorted(p for p in DOCS.rglob('*.md') if '_build' not in p.parts)

# A Python block runs unless the line before its fence is this comment, which must say why
# (e.g. it needs horovodrun), and which test runs the same code instead.
NOT_RUN = re.compile(r'<!-- not run: (.+?) -->')
FENCE = re.compile(r'^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=indent)```',
                   re.M | re.S)


def python_blocks(text):
    """[(line number, code, reason not run or None)] of the ```python blocks of a page."""
    blocks = []
    for match in FENCE.finditer(text):
        if match.group('info').strip() not in ('python', 'py', '{code-block} python'):
            continue
        before = text[:match.start()].rstrip().splitlines()
        skip = NOT_RUN.fullmatch(before[-1].strip()) if before else None
        blocks.append((text.count('\n', 0, match.start()) + 1,
                       textwrap.dedent(match.group('code')), skip and skip.group(1)))
    return blocks


def _page_id(path):
    return str(path.relative_to(ROOT))


def test_the_pages_have_examples_and_every_skip_says_why():
    blocks = {p: python_blocks(p.read_text()) for p in PAGES}
    assert sum(len(b) for b in blocks.values()) >= 10
    for page, page_blocks in blocks.items():
        for line, _, reason in page_blocks:
            assert reason is None or len(reason) > 20, (page, line)


@pytest.mark.parametrize('page', [p for p in PAGES
                                  if any(r is None for *_, r in python_blocks(p.read_text()))],
                         ids=_page_id)
def test_the_examples_of_a_page_run(page, tmp_path):
    """A page's blocks run in order in one interpreter, as a reader pastes them, in an empty
    folder (what they write stays there)."""
    script = []
    for line, code, reason in python_blocks(page.read_text()):
        if reason is None:
            script.append('# %s, line %d\n%s' % (page.name, line, code))
    env = dict(os.environ, MPLBACKEND='Agg', PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, '-c', '\n'.join(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, '%s:\n%s\n%s' % (page, result.stdout[-3000:],
                                                   result.stderr[-6000:])


def _modules():
    import namsg
    names = ['namsg', 'namsg_dist'] + [m.name for m in pkgutil.walk_packages(namsg.__path__,
                                                                             'namsg.')]
    return [n for n in names if not n.endswith('__main__')]


@pytest.mark.parametrize('name', _modules())
def test_the_docstring_examples_run(name, tmp_path, monkeypatch):
    """The ``>>>`` examples of every module's docstrings, which the API reference shows."""
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, name


# -- the site ------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    """The site built as `make docs` builds it, with -W (warnings are errors) and -n (nitpicky:
    every cross-reference must resolve)."""
    out = tmp_path_factory.mktemp('html')
    result = subprocess.run([sys.executable, '-m', 'sphinx', '-W', '-n', '--keep-going', '-q',
                             '-b', 'html', '-d', str(out / '.doctrees'), str(DOCS), str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-8000:]
    return out


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images = set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if 'id' in attrs:
            self.ids.add(attrs['id'])
        if tag == 'a' and attrs.get('href'):
            self.links.append(attrs['href'])
        if tag == 'img' and attrs.get('src'):
            self.images.append(attrs['src'])
        if tag == 'link' and attrs.get('rel') == 'stylesheet':
            self.links.append(attrs['href'])


def _parse(path):
    parser = _Links()
    parser.feed(path.read_text(errors='replace'))
    return parser


def test_the_site_builds_with_warnings_as_errors_and_has_every_page(site):
    built = {p.relative_to(site).with_suffix('') for p in site.rglob('*.html')}
    sources = {p.relative_to(DOCS).with_suffix('') for p in PAGES[1:]}
    assert sources <= built, sources - built


def test_no_internal_link_is_broken_and_no_image_is_missing(site):
    pages = {p: _parse(p) for p in site.rglob('*.html')}
    broken = []
    for page, parsed in pages.items():
        for url in parsed.links + parsed.images:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith('mailto:'):
                continue        # external: not checked offline
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / 'index.html'
            if not target.is_file():
                broken.append('%s: %s (no such file)' % (page.relative_to(site), url))
            elif parts.fragment and target.suffix == '.html':
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append('%s: %s (no such anchor)' % (page.relative_to(site), url))
    assert not broken, '\n'.join(broken)
    images = [i for parsed in pages.values() for i in parsed.images]
    assert any(i.endswith('.png') for i in images)


# -- the API reference ---------------------------------------------------------------------

def _api_pages(site):
    return sorted((site / 'api').glob('*.html'))


def _article_text(page):
    """The text of a page's article (its content, without the navigation), quotes unsmartened."""
    source = page.read_text()
    article = re.search(r'<article[^>]*>(.*)</article>', source, re.S)
    text = html.unescape(re.sub(r'<[^>]+>', '', article.group(1) if article else source))
    return text.translate(str.maketrans('‘’“”', "''\"\""))


#: What autodoc shows for a name without a description of its own: the docstring of its
#: value's type (``str(object='') -> str``, "Built-in immutable sequence.") or of a NamedTuple
#: field's accessor.
BORROWED = sorted({doc.strip().splitlines()[0] for doc in (
    getattr(builtins, name).__doc__ for name in dir(builtins)
    if isinstance(getattr(builtins, name), type)) if doc and doc.strip()} | {
    'Alias for field number'})


def test_every_api_entry_has_its_own_description(site):
    """``namsg.__version__`` showed str's docstring, ``namsg.PRECONDITIONERS`` tuple's (its
    ``#:`` comment is in namsg/arsg.py) and 36 NamedTuple fields "Alias for field number N"."""
    found = ['%s: %r' % (page.name, line) for page in _api_pages(site)
             for line in BORROWED if line in _article_text(page)]
    assert found == []


def _api_ids(site):
    return set().union(*(_parse(page).ids for page in _api_pages(site)))


def test_api_pages_show_no_internals(site):
    """Class attributes that only the package's code and old pickles use were documented
    (``Lookahead.STATE_LENGTH`` "see split_count", a private function)."""
    ids = _api_ids(site)
    assert {'namsg.PRECONDITIONERS', 'namsg.__version__', 'namsg.RSG.beta'} <= ids
    internals = {'namsg.Lookahead.STATE_LENGTH', 'namsg.Lookahead.skip_nonfinite_grad',
                 'namsg.RSG.NOT_TAKEN', 'namsg.ARSG.STATE_LENGTH'}
    assert ids & internals == set()


def test_every_optimizer_documents_its_skip_counts(site):
    """``nonfinite_skips`` was documented on Lookahead only, not on the optimizers that inherit
    it from the package's base class (ARSG and the others)."""
    import namsg
    from mxnet.optimizer import Optimizer
    optimizers = {value for value in map(partial(getattr, namsg), namsg.__all__)
                  if isinstance(value, type) and issubclass(value, Optimizer)}
    assert len(optimizers) == 6     # Arsg is ARSG
    assert {'namsg.%s.nonfinite_skips' % cls.__name__ for cls in optimizers} <= _api_ids(site)


def test_no_value_is_shown_whole_where_it_is_long(site):
    """TABLE_A1 was shown as one dict of 1,300 characters: it links to the table instead."""
    for page in _api_pages(site):
        for signature in re.findall(r'<dt class="sig[^>]*>(.*?)</dt>', page.read_text(), re.S):
            text = html.unescape(re.sub(r'<[^>]+>', '', signature)).strip()
            assert len(text) < 500, (page.name, text[:100])
    hparams = _article_text(site / 'api' / 'namsg.experiments.hparams.html')
    assert 'TABLE_A1 =' not in hparams
    assert re.search(r'drawn as a table in\s+the hyper-parameters guide', hparams)


@pytest.mark.parametrize('package', ['namsg.experiments', 'namsg.kernels'])
def test_a_package_page_lists_each_of_its_modules_once(site, package):
    """namsg.experiments's page listed its modules twice (its docstring's list, which left out
    ``threads``, and the page's own)."""
    module = importlib.import_module(package)
    names = [m.name for m in pkgutil.iter_modules(module.__path__, package + '.')
             if not m.name.endswith('__main__')]
    page = (site / 'api' / ('%s.html' % package)).read_text()
    counts = {name: page.count('#module-%s"' % name) for name in names}
    assert counts == dict.fromkeys(names, 1)


def _numpydoc_entries(docstring):
    """The entry lines (``name : type``) of a docstring's Parameters, Other Parameters and
    Attributes sections."""
    lines = textwrap.dedent('\n'.join(docstring.splitlines()[1:])).splitlines()
    section, entries = None, []
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and re.fullmatch(r'-{3,}', lines[i + 1].strip()):
            section = line.strip()
        elif section and re.match(r'(Other )?Parameters|Attributes', section) and \
                line and not line[0].isspace() and not set(line) <= {'-'}:
            entries.append(line)
    return entries


def test_every_parameter_has_its_own_entry():
    """``beta, mu : float`` gave napoleon two parameters with one description ("The momentum
    decay rate and the observation factor") each: one entry per name, with its own type,
    range and default."""
    import ast
    sources = sorted((ROOT / 'namsg').rglob('*.py')) + [ROOT / 'namsg_dist.py']
    shared = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                docstring = ast.get_docstring(node, clean=False)
                for entry in _numpydoc_entries(docstring or ''):
                    if re.match(r'\**\w+\s*,', entry):
                        shared.append('%s: %s' % (path.relative_to(ROOT), entry))
    assert shared == []
