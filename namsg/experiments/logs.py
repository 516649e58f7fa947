"""Run logs: one JSON-lines file per run, a header line (the run's configuration and what
describes the machine) then one record per epoch, written whole or not at all and read back
with any damage named."""

import json
from pathlib import Path

from .files import write_atomic


def write_log(path, header, records):
    """The log at ``path``: ``header`` then ``records``, one JSON line each, replacing the file
    whole (see :func:`~namsg.experiments.files.write_atomic`)."""
    write_atomic(path, ''.join(json.dumps(line) + '\n' for line in [header] + records))


class LogError(ValueError):
    """A file where a log should be is not a complete namsg training log; ``why`` says what is
    wrong with it in a few words, for a longer sentence."""

    def __init__(self, message, why):
        super().__init__(message)
        self.why = why


def read_log(path):
    """(header, epoch records) of a JSON-lines log; LogError names the file and the line when
    it is damaged (e.g. cut short mid-line by a full disk or a killed process)."""
    lines = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LogError('%s: line %d is not a complete JSON record (%s); the log was cut '
                           'short or damaged' % (path, number, e),
                           'line %d is cut short or damaged' % number) from e
    if not lines or not isinstance(lines[0], dict) or lines[0].get('type') != 'header':
        raise LogError('%s is not a namsg training log (no header line)' % path,
                       'it has no header line')
    return lines[0], [line for line in lines[1:] if line.get('type') == 'epoch']


def read_header(path):
    """The header line of the log at ``path`` if that line is whole, even where a later line is
    not (a log cut short keeps the command that trained its run); else None."""
    try:
        with open(path) as f:
            first = next((line for line in f if line.strip()), '')
        header = json.loads(first)
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) and header.get('type') == 'header' else None


def log_holds(log_path, records):
    """Whether the log at ``log_path`` already holds ``records`` (then it is left as it is, with
    the command that trained the run in its header)."""
    try:
        return read_log(log_path)[1] == json.loads(json.dumps(records))
    except (OSError, LogError):
        return False
