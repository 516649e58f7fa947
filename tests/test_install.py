"""What installing namsg asks of an environment (issue 12): no MXNet among its requirements (the
user's build stays), one clear error without MXNet, the experiments' packages in an extra that
the scripts name, and one pinned list of the reproduction environment. (.ci/compat.sh installs
the package into environments holding older MXNet releases and checks they are left as they
were.)"""

import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

from namsg import _mxnet

ROOT = Path(__file__).resolve().parent.parent


def _python(code, cwd=None):
    """Run ``code`` in a fresh interpreter (not from the clone, so that .ci/compat.sh's runs
    import the installed copy)."""
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _requirements(tmp_path):
    """{extra or '': [Requirement]} from setup.py as setuptools writes them into the metadata."""
    subprocess.run([sys.executable, 'setup.py', '-q', 'egg_info', '--egg-base', str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    sections, extra = {'': []}, ''
    for line in (tmp_path / 'namsg.egg-info' / 'requires.txt').read_text().splitlines():
        if line.startswith('['):
            extra = line.strip('[]')
            sections[extra] = []
        elif line.strip():
            sections[extra].append(Requirement(line))
    return sections


def test_no_mxnet_package_among_the_requirements(tmp_path):
    sections = _requirements(tmp_path)
    assert set(sections) == {'', 'experiments', 'test', 'docs'}
    assert [r.name for r in sections['']] == ['numpy']
    names = [r.name.lower() for rs in sections.values() for r in rs]
    assert not [n for n in names if n.startswith('mxnet')], names


def test_experiments_extra_is_what_namsg_experiments_checks(tmp_path):
    from namsg import experiments          # needs the extra itself (not in .ci/compat.sh's venvs)
    extra = {r.name for r in _requirements(tmp_path)['experiments']}
    assert extra == set(experiments.EXTRA_MODULES.values())


def test_reproduction_pins_satisfy_every_requirement(tmp_path):
    """The pinned lists (the reproduction's and the docs') hold an exact version of MXNet 1.9.1
    (CPU) and of every requirement of the package and its extras, each one that the requirement
    accepts."""
    pins = {}
    for pinned in ('requirements-reproduce.txt', 'requirements-docs.txt'):
        for line in (ROOT / pinned).read_text().splitlines():
            if line.strip() and not line.startswith('#'):
                requirement = Requirement(line)
                (specifier,) = requirement.specifier
                assert specifier.operator == '==', line
                assert pins.setdefault(requirement.name.lower(), specifier.version) == \
                    specifier.version, ('pinned twice, differently', line)
    assert pins['mxnet'] == '1.9.1'
    for requirements in _requirements(tmp_path).values():
        for requirement in requirements:
            assert requirement.specifier.contains(pins[requirement.name.lower()]), requirement


def test_import_without_mxnet_says_which_package_to_install():
    result = _python("import sys; sys.modules['mxnet'] = None\nimport namsg")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith('ImportError: namsg needs MXNet 1.x, which is not installed')
    for needed in ('pip install mxnet (CPU)', 'mxnet-cu112', "'numpy<1.24'") + _mxnet.TESTED:
        assert needed in lines[-1]
    assert 'During handling' not in result.stderr      # one error, not a chain of them


def test_unsupported_mxnet_release_is_refused_with_the_supported_range():
    result = _python("import mxnet; mxnet.__version__ = '2.0.0'\nimport namsg")
    assert result.returncode == 1
    assert 'ImportError: namsg supports MXNet 1.5 to 1.x; found 2.0.0' in result.stderr


def test_script_without_the_experiments_extra_names_it():
    """A script started where gluoncv is missing stops at once and names the extra."""
    script = str(ROOT / 'scripts' / 'reproduce_mnist.py')
    result = _python('import importlib.util, runpy, sys\n'
                     'find_spec = importlib.util.find_spec\n'
                     'importlib.util.find_spec = lambda name, *a: None if name == "gluoncv" '
                     'else find_spec(name, *a)\n'
                     'sys.argv = [%r, "--help"]\n'
                     'runpy.run_path(sys.argv[0], run_name="__main__")\n' % script)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: namsg's experiment scripts need gluoncv, which the optimizers alone do "
        "not: pip install 'namsg[experiments]' (from a clone: pip install -e '.[experiments]')")


def test_a_script_beside_a_folder_named_namsg_imports_the_package(tmp_path):
    """A script run from the folder that holds the clone (a folder named namsg, with no
    __init__.py at its top) imports the package, in the environment `make install` builds and in
    one where the package is installed: before, setuptools' default editable finder lost to that
    folder, which Python took for an empty namespace package, and 'arsg' was unknown (setup.py's
    package_dir has the editable install put the clone's folder on sys.path instead)."""
    (tmp_path / 'namsg').mkdir()
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run(
        [sys.executable, '-c', 'import importlib.util; '
         'print(importlib.util.find_spec("namsg").origin)'],
        capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    assert result.stdout.strip().endswith(os.path.join('namsg', '__init__.py')), \
        (result.stdout, result.stderr)
