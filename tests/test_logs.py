"""Run logs: written whole, readable as the umask allows."""

from namsg.experiments import logs


def test_logs_are_readable_as_the_umask_allows(tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        logs.write_log(tmp_path / 'a.jsonl', {'type': 'header'}, [])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / 'a.jsonl').stat().st_mode) == 0o644
