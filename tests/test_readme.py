"""The commands and flags that the README and the docs show are the ones the code has."""

import re
import shlex
import subprocess
from pathlib import Path

from namsg.experiments import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / 'README.md').read_text()
#: Where the reproduction scripts' flags are tabled.
OPTIONS_PAGE = (ROOT / 'docs' / 'reproduction' / 'index.md').read_text()
#: Every page a user reads: the README and the docs' Markdown pages.
PAGES = [ROOT / 'README.md'] + sorted(p for p in (ROOT / 'docs').rglob('*.md')
                                      if '_build' not in p.parts)


def _flag_table():
    start = OPTIONS_PAGE.index('## Options of the reproduction scripts')
    return OPTIONS_PAGE[start:OPTIONS_PAGE.index('\n## ', start + 1)]


def test_the_two_set_up_commands_exist_and_ci_runs_the_test_command():
    assert '\nmake reproduce' in README and '\nmake test' in README
    makefile = (ROOT / 'Makefile').read_text()
    assert re.search(r'^reproduce: ', makefile, re.M) and re.search(r'^test: ', makefile, re.M)
    ci = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines()
          if line and not line.startswith('#')]
    assert ci[-1] == 'make test'


def test_every_flag_in_the_docs_table_is_an_argparse_flag():
    table = _flag_table()
    flags = set(re.findall(r'^\| `(--[a-z-]+)`', table, re.M))
    parser_flags = {opt for experiment in cli.EXPERIMENTS
                    for action in cli.build_parser(experiment)._actions
                    for opt in action.option_strings}
    assert flags and flags <= parser_flags, flags - parser_flags
    assert {f for f in parser_flags if f.startswith('--') and f != '--help'} <= flags


def _parsers():
    """{script name: its argparse parser} for the scripts whose commands the README shows."""
    import importlib.util
    parsers = {'reproduce_mnist': cli.build_parser('mnist'),
               'reproduce_cifar10': cli.build_parser('cifar10')}
    for name in ('plot_results', 'benchmark_input_pipeline'):
        spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / (name + '.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parsers[name] = module.build_parser()
    return parsers


def test_the_reproduction_commands_of_the_readme_and_the_docs_parse():
    """Every `python scripts/<reproduce_*, plot_results, benchmark_input_pipeline>.py ...`
    line in the code blocks of the README and the docs is accepted by that script's parser."""
    parsers = _parsers()
    code = []
    for page in PAGES:
        inside = False
        for line in page.read_text().replace('\\\n', ' ').splitlines():
            if line.lstrip().startswith('```'):
                inside = not inside
            elif inside and 'scripts/' in line:
                code.append(line.split(' #')[0])
    commands = code
    checked = set()
    for command in commands:
        words = shlex.split(command)
        for i, word in enumerate(words):
            name = Path(word).stem
            if word.startswith('scripts/') and name in parsers:
                parsers[name].parse_args(words[i + 1:])
                checked.add(name)
    assert checked == set(parsers), set(parsers) - checked


def test_the_docs_flag_defaults_are_the_helps():
    """The table's default column states what --help states."""
    table = _flag_table()
    # MNIST's help where both scripts have the flag (the table's defaults are MNIST's first).
    actions = {a.option_strings[0]: a for experiment in ('cifar10', 'mnist')
               for a in cli.build_parser(experiment)._actions if a.option_strings}
    for flag, default in re.findall(r'^\| `(--[a-z-]+)` \| ([^|]*) \|', table, re.M):
        action = actions[flag]
        stated = re.findall(r'`([^`]+)`', default) or [default.strip()]
        shown = '%s %s' % (action.help, action.default)
        for value in stated:
            value = value.replace('$', '')
            assert value in shown or value in ('off', 'empty (CPU)', 'all eight', '0'), (
                flag, value, shown)


def test_the_log_dir_of_every_kind_of_run_is_named_in_the_help_and_the_table():
    """The help and the table named runs/mnist-dist alone for a job; a horovod job's runs go to
    runs/mnist-horovod."""
    row = re.search(r'^\| `--log-dir` \| ([^|]*) \|', _flag_table(), re.M).group(1)
    for experiment in cli.EXPERIMENTS:
        action, = [a for a in cli.build_parser(experiment)._actions
                   if '--log-dir' in a.option_strings]
        for kvstore in ('device', 'dist_sync', 'horovod'):
            folder, _ = cli.output_dirs(experiment, False, kvstore)
            assert folder in ' '.join(action.help.split()), (experiment, kvstore, action.help)
            if experiment == 'mnist':
                assert '`%s`' % folder in row, (kvstore, row)


#: A path outside the repository, of the machine the project was made on: the folder beside
#: the clone with the paper and the data, or that machine's work tree. (The brackets keep this
#: file from matching itself.)
OUTSIDE = re.compile(r'\.\./share[d]\b|\bshare[d]/(?:paper|data|EXPERIMENTS)|/wor[k]/')


def _tracked_files():
    """The repository's files (``git ls-files``; without git, every file but those git
    ignores here)."""
    try:
        listed = subprocess.run(['git', '-C', str(ROOT), 'ls-files', '-z'], capture_output=True,
                                check=True).stdout.decode().split('\0')
        return [ROOT / name for name in listed if name and (ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skipped = {'.git', '.venv', '_build', '__pycache__', 'build', 'runs'}
        return [p for p in ROOT.rglob('*') if p.is_file() and not skipped & set(p.parts)
                and not any(part.endswith('.egg-info') for part in p.parts)]


def test_nothing_refers_outside_the_repository():
    """No file of the project names a path of the machine it was made on (reference.py cited
    the paper as a file beside the clone). The committed run logs are the exception: their
    headers record the data path and the command of each run as it was run."""
    files = [p for p in _tracked_files()
             if not (p.suffix == '.jsonl' and p.relative_to(ROOT).parts[0] == 'logs')]
    assert len(files) > 100
    offenders = ['%s: %s' % (p.relative_to(ROOT), match.group()) for p in files
                 for match in OUTSIDE.finditer(p.read_bytes().decode(errors='replace'))]
    assert offenders == []
