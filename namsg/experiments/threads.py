"""How many threads MXNet runs its CPU operators on, against the cores this process may use.

MXNet 1.x takes ``$OMP_NUM_THREADS`` where it is set (``$MXNET_OMP_MAX_THREADS`` caps it). Where
neither is set it takes, on x86, half the logical CPUs (``src/engine/openmp.cc``: it counts on
two hyper-threads per core), elsewhere all of them. On a CPU with one thread per core, as many
cloud machines have, that leaves half the cores idle, and MXNet says nothing (see "Cores and
processes" in the reproduction guide for what it cost here). The scripts say so before they
train (:func:`idle_cores_note`).
"""

import os
import platform

#: The variables through which MXNet is told its OpenMP thread count.
THREAD_VARIABLES = ('OMP_NUM_THREADS', 'MXNET_OMP_MAX_THREADS')
_X86 = ('x86_64', 'amd64', 'i386', 'i686', 'x86')


def usable_cpus():
    """The logical CPUs this process may run on (its affinity where the OS has one)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:                      # not Linux
        return list(range(os.cpu_count() or 1))


def mxnet_default_threads(cpus, machine=None):
    """The OpenMP threads MXNet 1.x takes with neither of :data:`THREAD_VARIABLES` set, for
    ``cpus`` logical CPUs: half of them on x86 (at least 1), all of them elsewhere."""
    machine = (machine or platform.machine()).lower()
    return max(1, cpus // 2) if machine in _X86 else cpus


def physical_cores(cpus, sysfs='/sys/devices/system/cpu'):
    """The physical cores behind the logical CPUs ``cpus`` (a list of CPU numbers): the distinct
    sets of hyper-thread siblings that Linux lists in ``sysfs``; None where it lists none."""
    siblings = set()
    for cpu in cpus:
        try:
            with open(os.path.join(sysfs, 'cpu%d' % cpu, 'topology', 'thread_siblings_list')) as f:
                siblings.add(f.read().strip())
        except OSError:
            return None
    return len(siblings) or None


def idle_cores_note(environ=None, cpus=None, machine=None, sysfs='/sys/devices/system/cpu'):
    """A line for the scripts to print where MXNet will leave cores idle: neither of
    :data:`THREAD_VARIABLES` is set and MXNet's default thread count is below the physical cores
    this process may use. None otherwise (a variable set is the user's choice).

    Parameters
    ----------
    environ : dict or None, default None
        The environment; None: ``os.environ``.
    cpus : list of int or None, default None
        The logical CPUs; None: :func:`usable_cpus`.
    machine : str or None, default None
        ``platform.machine()``'s answer; None: this machine's.
    sysfs : str, default '/sys/devices/system/cpu'
        Where Linux describes the CPUs.

    Returns
    -------
    str or None
    """
    environ = os.environ if environ is None else environ
    if any(environ.get(name, '').strip() for name in THREAD_VARIABLES):
        return None
    cpus = usable_cpus() if cpus is None else cpus
    threads = mxnet_default_threads(len(cpus), machine)
    cores = physical_cores(cpus, sysfs)
    if cores is None or threads >= cores:
        return None
    return ('threads: MXNet will run its operators on %d thread%s of the %d cores this process '
            'may use: with $OMP_NUM_THREADS unset it takes half the logical CPUs, counting on '
            'two hyper-threads per core, which this CPU does not have. Set OMP_NUM_THREADS=%d '
            'to use them all (or the cores divided by the processes, where several train at '
            'once)' % (threads, '' if threads == 1 else 's', cores, cores))
