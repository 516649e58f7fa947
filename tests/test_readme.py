"""The README's commands and flags are the ones the code has."""

import re
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
