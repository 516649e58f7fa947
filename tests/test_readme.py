"""The README's commands and flags are the ones the code has."""

import re
import shlex
from pathlib import Path

from namsg.experiments import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / 'README.md').read_text()


def test_the_two_set_up_commands_exist_and_ci_runs_the_test_command():
    assert '\nmake reproduce' in README and '\nmake test' in README
    makefile = (ROOT / 'Makefile').read_text()
    assert re.search(r'^reproduce: ', makefile, re.M) and re.search(r'^test: ', makefile, re.M)
    ci = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines()
          if line and not line.startswith('#')]
    assert ci[-1] == 'make test'


def test_every_flag_in_the_readme_table_is_an_argparse_flag():
    table = README[README.index('### MNIST'):README.index('### CIFAR-10')]
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


def test_the_readmes_reproduction_commands_parse():
    """Every `python scripts/<reproduce_*, plot_results, benchmark_input_pipeline>.py ...`
    line in the README's code blocks is accepted by that script's parser."""
    parsers = _parsers()
    code, inside = [], False
    for line in README.replace('\\\n', ' ').splitlines():
        if line.startswith('```'):
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


def test_the_readmes_flag_defaults_are_the_helps():
    """The table's default column states what --help states."""
    table = README[README.index('### MNIST'):README.index('### CIFAR-10')]
    actions = {a.option_strings[0]: a for a in cli.build_parser('mnist')._actions
               if a.option_strings}
    for flag, default in re.findall(r'^\| `(--[a-z-]+)` \| ([^|]*) \|', table, re.M):
        action = actions[flag]
        stated = re.findall(r'`([^`]+)`', default) or [default.strip()]
        shown = '%s %s' % (action.help, action.default)
        for value in stated:
            value = value.replace('$', '')
            assert value in shown or value in ('off', 'empty (CPU)', 'all eight', '0'), (
                flag, value, shown)


def test_nothing_refers_outside_the_repository():
    files = [ROOT / 'README.md', ROOT / 'Makefile', ROOT / 'logs' / 'README.md']
    files += [p for folder in ('namsg', 'scripts', 'tests') for p in (ROOT / folder).rglob('*.py')]
    offenders = [str(p) for p in files if '../shared' in p.read_text()
                 and p.name != 'test_readme.py']
    assert offenders == []
