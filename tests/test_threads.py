"""The line the scripts print where MXNet would leave cores idle (namsg.experiments.threads):
MXNet 1.x, with $OMP_NUM_THREADS unset, takes half the logical CPUs on x86, counting on two
hyper-threads per core; the committed CIFAR-10 runs trained on one of this machine's two cores
so, unsaid."""

import pytest

from namsg.experiments import threads


def _sysfs(root, cpus, threads_per_core):
    """A /sys/devices/system/cpu with ``cpus`` logical CPUs, ``threads_per_core`` to a core."""
    for cpu in range(cpus):
        first = cpu - cpu % threads_per_core
        folder = root / 'sysfs' / ('cpu%d' % cpu) / 'topology'
        folder.mkdir(parents=True, exist_ok=True)
        (folder / 'thread_siblings_list').write_text(
            '%d-%d\n' % (first, first + threads_per_core - 1) if threads_per_core > 1
            else '%d\n' % cpu)
    return str(root / 'sysfs')


def test_one_thread_per_core_leaves_half_of_them_idle_and_says_so(tmp_path):
    note = threads.idle_cores_note({}, [0, 1], 'x86_64', _sysfs(tmp_path, 2, 1))
    assert note == (
        'threads: MXNet will run its operators on 1 thread of the 2 cores this process may use: '
        'with $OMP_NUM_THREADS unset it takes half the logical CPUs, counting on two '
        'hyper-threads per core, which this CPU does not have. Set OMP_NUM_THREADS=2 to use '
        'them all (or the cores divided by the processes, where several train at once)')
    assert 'on 8 threads of the 16 cores' in threads.idle_cores_note(
        {}, list(range(16)), 'AMD64', _sysfs(tmp_path / 'big', 16, 1))


@pytest.mark.parametrize('case', ['hyper-threads', 'OMP_NUM_THREADS', 'MXNET_OMP_MAX_THREADS',
                                  'not x86', 'no topology'])
def test_nothing_is_said_where_mxnet_uses_every_core_or_was_told(tmp_path, case):
    environ = {case: '1'} if case.isupper() else {'OMP_NUM_THREADS': '  '}   # blank: unset
    sysfs = _sysfs(tmp_path, 4, 2 if case == 'hyper-threads' else 1)
    if case == 'no topology':
        sysfs = str(tmp_path / 'nowhere')
    machine = 'aarch64' if case == 'not x86' else 'x86_64'
    assert threads.idle_cores_note(environ, [0, 1, 2, 3], machine, sysfs) is None


def test_the_cores_are_counted_among_the_cpus_the_process_may_use(tmp_path):
    sysfs = _sysfs(tmp_path, 8, 2)               # 4 cores of 2 hyper-threads
    assert threads.physical_cores([0, 1, 2, 3], sysfs) == 2
    assert threads.physical_cores([0, 2, 4, 6], sysfs) == 4
    assert threads.mxnet_default_threads(1, 'x86_64') == 1
