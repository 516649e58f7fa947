"""Distributed training with MXNet's parameter server: a server entry point that can unpickle
namsg's optimizers, and a launcher for whole jobs on this machine or over ssh.

Why a server entry point: with ``kvstore='dist_*'`` and updates on the kvstore, workers pickle
the optimizer and every server unpickles and applies it. An MXNet 1.9.1 server (or scheduler)
enters its serving loop from inside ``import mxnet``, so a third-party optimizer module imported
while unpickling meets a half-initialised ``mxnet`` and fails. Here the role is hidden while
``mxnet`` and the optimizer modules import, then restored, and only then does the serving loop
start. Its controller also takes namsg's settings commands: a worker that changes a setting
after sending the optimizer (the step size by ``Trainer.set_learning_rate`` or the observation
boost, ``mu``, ``wd``, a hyper-parameter) has the servers set it on the optimizer they run
(namsg.kvstore_sync.server_settings).

This module lives outside the ``namsg`` package on purpose: ``python -m namsg.dist`` would run
``namsg/__init__.py``, which imports mxnet, before any of this code, and a server would enter its
loop right there.

Commands (``python -m namsg_dist --help``):

* ``run -- CMD...``: what every process of a job runs. A scheduler or server (``DMLC_ROLE``)
  serves, after importing namsg (and the modules in ``$NAMSG_SERVER_IMPORTS``, comma-separated);
  a worker runs CMD. Any dmlc_tracker back end (local, ssh, mpi, ...) can launch it.
* ``launch -n W -s S [--launcher local|ssh|mpi] [--timeout SECONDS] -- CMD...``: a whole job.
  ``local`` starts the scheduler, S servers and W workers on 127.0.0.1; ``ssh`` starts the
  scheduler here and the servers and workers on the hosts of ``-H FILE`` in turn, every path and
  argument quoted for the remote shell. Both forward every process's output labelled with its
  role and rank (``[worker 1]`` is the worker whose ``kv.rank`` is 1), bound the time, and end
  every process they started (with their process groups, and on the hosts each remote process
  with its ssh connection) on success, on the first failing process (the job's status is its
  status: 255 for a host ssh cannot reach), on timeout (124) and on SIGINT, SIGTERM or SIGHUP
  (128 + the signal). ``mpi`` hands the job, wrapped in ``run``, to dmlc_tracker's MPI back end.
"""

import argparse
import atexit
import contextlib
import importlib
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

__all__ = ['serve', 'launch_local', 'launch_ssh', 'read_hosts', 'install_worker_exit_hooks',
           'worker_site', 'STOP_SIGNALS', 'main']

SERVER_ROLES = ('server', 'scheduler')
#: Tells a worker that its job's servers run serve() (namsg.kvstore_sync.SERVERS_ENV; not
#: imported from there, which would import mxnet).
SERVERS_ENV = 'NAMSG_DIST_SERVERS'


def serve():
    """Run this process as the scheduler or a server named by DMLC_ROLE, with namsg (and
    $NAMSG_SERVER_IMPORTS) imported before the serving loop starts."""
    role = os.environ.get('DMLC_ROLE')
    if role not in SERVER_ROLES:
        raise SystemExit('namsg_dist serve: DMLC_ROLE is %r; it must be scheduler or server'
                         % role)
    del os.environ['DMLC_ROLE']          # import mxnet as a plain (worker-side) module
    import mxnet  # noqa: F401
    import namsg  # noqa: F401  (registers the optimizers the workers will send pickled)
    for name in filter(None, os.environ.get('NAMSG_SERVER_IMPORTS', '').split(',')):
        importlib.import_module(name.strip())
    os.environ['DMLC_ROLE'] = role
    try:
        from mxnet.kvstore import kvstore_server        # MXNet 1.7 and later: a package
    except ImportError:
        from mxnet import kvstore_server                # MXNet 1.5 and 1.6
    # As kvstore_server._init_kvstore_server_module, with namsg's controller.
    _server_class(kvstore_server.KVStoreServer)(mxnet.kv.create('dist')).run()
    sys.exit()    # serves until the job ends


def _server_class(base):
    """MXNet's KVStoreServer whose controller also takes namsg's settings commands
    (namsg.kvstore_sync.ServerSettings): a worker changed settings (lr, wd, mu, ...) of the
    optimizer the server runs, which keeps its states and update counts."""
    from namsg import kvstore_sync

    class Server(base):
        def _controller(self):
            mxnet_controller = super()._controller()

            def take(cmd_id, cmd_body, arg):
                if cmd_id == 0:
                    command = kvstore_sync.decode_command(cmd_body)
                    if isinstance(command, kvstore_sync.ServerSettings):
                        if self.kvstore._updater is None:
                            raise RuntimeError('settings %s arrived before an optimizer'
                                               % command.settings)
                        command.apply(self.kvstore._updater.optimizer)
                        logging.info('namsg server %d: optimizer settings now %s',
                                     self.kvstore.rank, command.settings)
                        return
                mxnet_controller(cmd_id, cmd_body, arg)

            def controller(cmd_id, cmd_body, arg):
                # An exception here would reach ctypes, which prints it and serves on: without
                # the optimizer the workers sent, the server would store the sum of their
                # gradients as the weights, and the job would end "successfully".
                try:
                    take(cmd_id, cmd_body, arg)
                except Exception as e:      # noqa: BLE001 (any failure ends the server)
                    logging.exception('namsg server %d: cannot take command %d from a worker',
                                      self.kvstore.rank, cmd_id)
                    hint = (' A server imports namsg and the modules in $NAMSG_SERVER_IMPORTS '
                            '(comma-separated) before it serves: define the optimizer in a '
                            'module, not in the training script, and name that module there.'
                            if isinstance(e, (ImportError, AttributeError)) else '')
                    sys.stderr.write('namsg server %d: error: cannot take what a worker sent '
                                     '(%s: %s).%s Ending this server and, under `namsg_dist '
                                     'launch`, the job.\n'
                                     % (self.kvstore.rank, type(e).__name__, e, hint))
                    _exit_now(1)
            return controller
    return Server


def run(command):
    """Serve if this process is a scheduler or server, else run ``command`` as the worker, with
    :func:`worker_site` first on its PYTHONPATH (exit hooks for Python workers)."""
    if os.environ.get('DMLC_ROLE') in SERVER_ROLES:
        serve()
        return 0
    if not command:
        raise SystemExit('namsg_dist run: give the worker command after --')
    try:
        _check_command(command)
        env = _with_worker_site(os.environ)     # exit hooks, namsg imported or not
    except (ValueError, RuntimeError) as e:
        raise SystemExit('namsg_dist run: %s' % e)
    env[SERVERS_ENV] = '1'      # the job's servers run serve(): see namsg.kvstore_sync
    os.execvpe(command[0], command, env)


# -- workers that end with an error ------------------------------------------------------------

def install_worker_exit_hooks():
    """End this process, a worker of a ``dist_*`` job, at once when its program ends with an
    error: an uncaught exception after its traceback, with status 1 (130 for KeyboardInterrupt),
    and ``sys.exit(n)`` that reaches the top level with n not 0 or None, after its message, with
    status n (1 for a message). Otherwise the interpreter's shutdown would run the kvstore's
    destructor, which waits in ps-lite's exit barrier for the other workers while they wait for
    this one in push/pull: the job would hang. A ``sys.exit`` that the program catches, and
    normal ends (``sys.exit()``, ``sys.exit(0)``, the end of the script) behave as before: the
    barrier then ends the job cleanly. ``atexit`` handlers do not run on the error paths
    (``finally`` blocks and ``with`` exits do: the stack has unwound). ``raise SystemExit(n)``
    written out is not covered (call ``sys.exit``).

    A program that ends normally waits for MXNet's engine first, before any ``atexit`` handler:
    a worker that ends with kvstore operations still pending (a script ending right after
    ``trainer.step``) otherwise hangs in MXNet's own exit handler, whose ``WaitForAll`` waits
    for replies the servers no longer send once another worker has reached the exit barrier
    (MXNet 1.5-1.9, with MXNet's optimizers as with namsg's).

    ``import namsg`` installs this in a process with ``DMLC_ROLE=worker``; every worker that
    ``launch`` or ``run -- CMD`` starts (on this machine or, by ``run``, under ssh, mpi or
    another launcher) installs it at interpreter start too, namsg imported or not (the
    ``sitecustomize`` module in :func:`worker_site`, on its PYTHONPATH). Installing twice
    changes nothing."""
    if getattr(sys.exit, '_namsg_worker_exit', False):
        return
    # Run by the interpreter's shutdown before any atexit handler (MXNet registers its own at
    # import, which an atexit handler registered here, before the import, would follow).
    # Python 3.8 lacks it: there atexit's, which precedes MXNet's where namsg is imported after
    # mxnet (as it must be to be used).
    getattr(threading, '_register_atexit', atexit.register)(_wait_for_the_engine)
    previous = sys.excepthook

    def excepthook(kind, value, traceback):
        previous(kind, value, traceback)
        _exit_now(130 if issubclass(kind, KeyboardInterrupt) else 1)

    def worker_exit(status=None):
        if threading.current_thread() is not threading.main_thread():
            # Ends the thread alone, which threading does silently for SystemExit itself only.
            raise SystemExit(status)
        raise _WorkerExit(status)

    worker_exit._namsg_worker_exit = True
    worker_exit.__doc__ = sys.exit.__doc__
    sys.excepthook = excepthook
    sys.exit = worker_exit


class _WorkerExit(SystemExit):
    """What ``sys.exit`` raises in a worker (see install_worker_exit_hooks). The interpreter
    drops an uncaught one after the stack has unwound, with no Python frame left, and before it
    frees the traceback (whose frames may hold the kvstore); a caught one is dropped by Python
    code. Only an uncaught one ends the process."""

    def __del__(self):
        if sys._getframe(0).f_back is not None or sys.is_finalizing():
            return
        code = self.code
        if code is None or (isinstance(code, int) and code == 0):
            return
        if not isinstance(code, int):
            # The interpreter prints a non-integer status after dropping the exception.
            try:
                print(code, file=sys.stderr)
            except Exception:       # noqa: BLE001 (a broken stderr must not keep us waiting)
                pass
            code = 1
        _exit_now(code)


def _wait_for_the_engine():
    """At a worker's normal end: wait until MXNet's engine has run every operation the program
    pushed, before MXNet's exit handler and the kvstore's exit barrier (see
    :func:`install_worker_exit_hooks`). An operation's error ends the process with status 1,
    after its traceback: at exit MXNet would only print it."""
    mxnet = sys.modules.get('mxnet')
    if mxnet is None:
        return
    try:
        mxnet.nd.waitall()
    except Exception:       # noqa: BLE001 (any error of the program's operations)
        traceback.print_exc()
        _exit_now(1)


def _exit_now(status):
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    # Skip the interpreter's shutdown: see install_worker_exit_hooks.
    os._exit(status)


def worker_site():
    """The folder of the workers' ``sitecustomize`` module (``namsg/_worker_site``), which
    installs :func:`install_worker_exit_hooks` at interpreter start; found beside this module
    without importing namsg (which imports mxnet). Raises RuntimeError if an installation lacks
    it."""
    site = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'namsg', '_worker_site')
    if not os.path.isfile(os.path.join(site, 'sitecustomize.py')):
        raise RuntimeError('namsg_dist: %s/sitecustomize.py is missing: this installation of '
                           'namsg is incomplete; reinstall it (pip install namsg)' % site)
    return site


def _with_worker_site(env):
    """``env`` with :func:`worker_site` first on its PYTHONPATH."""
    return dict(env, PYTHONPATH=os.pathsep.join(filter(None, [worker_site(),
                                                              env.get('PYTHONPATH')])))


def _check_command(command):
    """Raise ValueError unless ``command[0]`` is an executable file or found on PATH."""
    if shutil.which(command[0]) is None:
        raise ValueError('the worker command %r is neither an executable file nor found on PATH '
                         '(give the program and its arguments after --, e.g. -- python '
                         'train.py)' % command[0])


def _free_ports(count):
    """``count`` distinct ports free on 127.0.0.1 now, ascending."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(('127.0.0.1', 0))
        return sorted(s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()


def _free_port():
    return _free_ports(1)[0]


# -- the processes of a job ----------------------------------------------------------------------

#: ps-lite's log line (at PS_VERBOSE >= 1) that a worker (W) or server (S) process is connected,
#: with its node id: worker rank r has id 9 + 2 r, server rank r id 8 + 2 r (ps::Postoffice).
_CONNECTED = re.compile(r'\b([WS])\[(\d+)\] is connected to others')
#: The other PS_VERBOSE=1 lines of a worker or server, left out when the launcher asked for them
#: only to learn the ranks.
_PSLITE_VERBOSE = re.compile(r'ps-lite/src/\S+: (Bind to role=|[WSH]\[\d+\] is (connected to '
                             r'others|stopping|stopped)\s*$)')


class _Process:
    """One process of a job: its role, its rank among its role's processes (a worker's is
    MXNet's ``kv.rank``), the command that starts it and, once started, the Popen."""

    def __init__(self, role, rank, argv, env, host=None):
        self.role, self.rank, self.argv, self.env, self.host = role, rank, argv, env, host
        self.launched_as = rank
        self.popen = None

    @property
    def name(self):
        return '%s %d' % (self.role, self.rank)

    def start(self):
        # Its own process group (start_new_session), so that ending the job reaches what it
        # started; stdin a pipe that the launcher holds, whose end tells an ssh process's
        # remote side to end (see _REMOTE_SCRIPT).
        self.popen = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def learn_rank(self, line, out):
        """Relabel by the rank ps-lite gave (``line`` says it, at PS_VERBOSE >= 1) when it is
        not the rank this process was launched as (its port was taken, or another MXNet sorts
        nodes otherwise)."""
        match = _CONNECTED.search(line)
        if match is None or self.role == 'scheduler':
            return
        rank = (int(match.group(2)) - (9 if match.group(1) == 'W' else 8)) // 2
        if rank != self.rank:
            out.write('namsg_dist: the %s launched as %s %d is rank %d (MXNet\'s kv.rank): its '
                      'lines are labelled [%s %d] from here on\n'
                      % (self.role, self.role, self.launched_as, rank, self.role, rank))
            self.rank = rank

    def status_note(self, status):
        if self.host is not None and status == 255:
            return (' (ssh\'s status when it cannot reach %s or loses the connection: check that '
                    '`ssh %s true` works without a password prompt)' % (self.host, self.host))
        return ''


def _forward(process, out, quiet_pslite):
    """Copy ``process``'s output to ``out``, each line labelled with its role and rank."""
    for raw in iter(process.popen.stdout.readline, b''):
        line = raw.decode(errors='replace')
        process.learn_rank(line, out)
        if quiet_pslite and _PSLITE_VERBOSE.search(line):
            continue
        out.write('[%s] %s' % (process.name, line))
        out.flush()


def _pslite_verbosity(env):
    """The environment with PS_VERBOSE >= 1 (ps-lite then logs each node's id, hence its rank),
    and whether the launcher set it (and so leaves out the lines it adds)."""
    if env.get('PS_VERBOSE', '').strip() not in ('', '0'):
        return env, False
    return dict(env, PS_VERBOSE='1'), True


#: The signals that end a job and every process of it: SIGINT (Ctrl-C), SIGTERM (batch
#: schedulers, ``timeout`` and containers send it) and SIGHUP (a closed terminal); the launcher
#: then exits with 128 + the signal's number.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signal_handlers(handler):
    """``handler`` for STOP_SIGNALS inside the block (only the main thread can set them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _kill_groups(processes, sig):
    # Every process leads its own process group (start_new_session): the signal also reaches
    # what it started, even after the process itself has exited.
    for process in processes:
        try:
            os.killpg(process.popen.pid, sig)
        except ProcessLookupError:
            pass


def _end(processes):
    """Close every process's stdin (an ssh process's remote side then ends its own processes),
    SIGTERM to every process group of the job, SIGKILL to those still there after 5 s. A further
    stop signal meanwhile kills at once, so nothing is left behind."""
    with _signal_handlers(lambda signum, frame: _kill_groups(processes, signal.SIGKILL)):
        for process in processes:
            try:
                process.popen.stdin.close()
            except OSError:
                pass
        _kill_groups(processes, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in processes:
            try:
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        _kill_groups(processes, signal.SIGKILL)
        for process in processes:
            process.popen.wait()


def _run_job(processes, timeout, out, quiet_pslite):
    """Start ``processes`` (scheduler first), forward their output, and end them all: see
    :func:`launch_local` for the statuses returned."""
    deadline = time.monotonic() + timeout
    started, threads, stopped = [], [], []
    status = 0
    # A stop signal only sets a flag: the loops below check it, so the cleanup never starts
    # between a Popen and the bookkeeping of its process.
    with _signal_handlers(lambda signum, frame: stopped.append(signum)):
        try:
            for process in processes:
                if stopped:
                    break
                process.start()
                started.append(process)
                thread = threading.Thread(target=_forward, daemon=True,
                                          args=(process, out, quiet_pslite))
                thread.start()
                threads.append(thread)
            while not stopped:
                # Every process, every time (any() would stop early): the first one that ended
                # with an error, a worker or the scheduler or a server (then the workers would
                # wait for it for ever), ends the job.
                codes = [(process, process.popen.poll()) for process in started]
                failed = next(((process, code) for process, code in codes if code), None)
                if failed:
                    process, code = failed
                    status = code if code > 0 else 128 - code
                    out.write('namsg_dist: %s exited with status %d%s; ending the job\n'
                              % (process.name, status, process.status_note(status)))
                    break
                if None not in [code for process, code in codes if process.role == 'worker']:
                    break
                if time.monotonic() > deadline:
                    out.write('namsg_dist: the job exceeded %g s; ending it\n' % timeout)
                    status = 124
                    break
                time.sleep(0.1)
            # Servers and the scheduler leave by themselves once every worker is done.
            grace = time.monotonic() + max(1.0, min(30.0, deadline - time.monotonic()))
            while not status and not stopped and time.monotonic() < grace and \
                    any(process.popen.poll() is None for process in started):
                time.sleep(0.1)
        finally:
            _end(started)
            for thread in threads:
                thread.join(timeout=2)
    if stopped:
        out.write('namsg_dist: got signal %d; ended the job\n' % stopped[0])
        return 128 + stopped[0]
    return status


def _check_job(num_workers, num_servers, timeout):
    if num_workers < 1 or num_servers < 1:
        raise ValueError('a parameter-server job needs >= 1 worker and >= 1 server, got '
                         '%d workers and %d servers' % (num_workers, num_servers))
    _check_timeout(timeout)
    worker_site()


def _server_command():
    return [sys.executable, '-m', 'namsg_dist', 'run', '--']


def launch_local(command, num_workers, num_servers=1, timeout=600, env=None, out=None):
    """Run one job on this machine: scheduler, servers (``python -m namsg_dist run``) and
    workers (``command``), all on 127.0.0.1. Output lines are forwarded to ``out`` (default
    stdout) labelled with the process's role and rank, e.g. ``[worker 1]`` for the worker whose
    ``kv.rank`` is 1: each worker is launched on a port of its own, in the order of their ranks
    (ps-lite ranks a machine's processes by port), and if ps-lite ranks one otherwise (its port
    was taken meanwhile), a ``namsg_dist: the worker launched as worker 0 is rank 1`` line says
    so and its label follows from then on. ``DMLC_TASK_ID`` is that rank too.

    Raises ValueError, before starting anything, for a job without workers or servers, a
    ``timeout`` that is not > 0 seconds or a ``command`` whose program is not found. Returns 0
    when every worker exited 0; otherwise the first non-zero status of a worker, the scheduler
    or a server (128 + N for one killed by signal N; the job ends as soon as one fails), 124 on
    timeout, or 128 + N after signal N of :data:`STOP_SIGNALS` (when called from the main
    thread). Every process started, and every process in their process groups, is ended before
    returning. Python workers install :func:`install_worker_exit_hooks` at start, so that one
    ending with an error does not hang the job."""
    _check_job(num_workers, num_servers, timeout)
    _check_command(command)
    port = _free_port()
    server_ports, worker_ports = _free_ports(num_servers), _free_ports(num_workers)
    env = dict(os.environ, **(env or {}))
    nodes_env, quiet = _pslite_verbosity(env)

    def process(role, rank, argv, node_port=None):
        role_env = dict(env if role == 'scheduler' else nodes_env, DMLC_ROLE=role, DMLC_PS_ROOT_URI='127.0.0.1',
                        DMLC_PS_ROOT_PORT=str(port), DMLC_NUM_WORKER=str(num_workers),
                        DMLC_NUM_SERVER=str(num_servers), DMLC_TASK_ID=str(rank),
                        DMLC_JOB_CLUSTER='local', **{SERVERS_ENV: '1'})
        if node_port is not None:
            role_env['PORT'] = str(node_port)
        # ps-lite picks the interface from these; loopback keeps the job on this machine.
        role_env.setdefault('DMLC_NODE_HOST', '127.0.0.1')
        role_env.setdefault('DMLC_INTERFACE', 'lo')
        if role == 'worker':
            role_env = _with_worker_site(role_env)
        return _Process(role, rank, argv, role_env)

    processes = [process('scheduler', 0, _server_command())] + \
        [process('server', i, _server_command(), server_ports[i]) for i in range(num_servers)] + \
        [process('worker', i, list(command), worker_ports[i]) for i in range(num_workers)]
    return _run_job(processes, timeout, out or sys.stdout, quiet)


# -- ssh ---------------------------------------------------------------------------------------

#: What an ssh process runs on its host (``sh -c SCRIPT namsg_dist DIR COMMAND...``): enter DIR,
#: run COMMAND, and end COMMAND's whole process group when ssh's stdin ends (the launcher ended
#: the job, or died, or the connection broke), which ssh without a terminal does not do itself.
#: The status is COMMAND's. One line: a csh login shell refuses a newline inside quotes.
_REMOTE_SCRIPT = '; '.join([
    'cd -- "$1" || { echo "namsg_dist: cannot enter the directory $1 on $DMLC_NODE_HOST" >&2; '
    'exit 1; }',
    'shift',
    'exec 3<&0 </dev/null',             # ssh's stdin kept as fd 3, for the watcher alone
    '"$@" 3<&- & child=$!',
    "{ trap '' TERM; while read -r _ <&3; do :; done; kill -TERM 0; sleep 5; kill -KILL 0; "
    '} >/dev/null 2>&1 & watcher=$!',
    'exec 3<&-',
    'wait "$child"',
    'status=$?',
    'kill "$watcher" 2>/dev/null',
    'exit "$status"'])

#: The variables an ssh job passes to its hosts (ssh does not pass the environment), besides
#: DMLC_* that the job sets and ``env``: these, and every one whose name starts with one of
#: _PASSED_PREFIXES. dmlc_tracker's own list, less the AWS credentials (a command line is
#: visible to every user of both machines).
_PASSED = ('OMP_NUM_THREADS', 'KMP_AFFINITY', 'LD_LIBRARY_PATH', 'PYTHONPATH', 'DMLC_INTERFACE')
_PASSED_PREFIXES = ('MXNET_', 'NAMSG_', 'PS_')
_SSH = ['ssh', '-o', 'StrictHostKeyChecking=no', '-o', 'BatchMode=yes']


def read_hosts(path):
    """The hosts of a host file, as dmlc_tracker reads one.

    Parameters
    ----------
    path : str
        A file with one host per line: ``host``, ``host:port`` (ssh's port) or an MPI host
        file's ``host slots=N``; blank lines are skipped.

    Returns
    -------
    list of tuple
        (host, ssh port) per line, the port ``'22'`` where none is given.

    Raises
    ------
    ValueError
        For a file that cannot be read, lists no host, or has a line of another form.
    """
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise ValueError('-H/--hostfile %s cannot be read (%s): give a file with one host per '
                         'line' % (path, e.strerror or e)) from e
    if not lines:
        raise ValueError('-H/--hostfile %s lists no host: give one host per line' % path)
    hosts = []
    for line in lines:
        host, _, port = line.split('slots=')[0].strip().partition(':')
        if not host or (port and not port.isdigit()):
            raise ValueError('-H/--hostfile %s: %r is not host, host:port or host slots=N'
                             % (path, line))
        hosts.append((host, port or '22'))
    return hosts


def _this_machines_address():
    """The address other machines reach this one at, as dmlc_tracker guesses it."""
    address = socket.gethostbyname(socket.getfqdn())
    if address.startswith('127.'):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(('10.255.255.255', 1))      # no packet is sent: picks the route's address
            address = s.getsockname()[0]
    return address


def _address(host):
    """``host``'s address as this machine resolves it (``host`` itself if it cannot)."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def _ps_ranks(nodes):
    """The ranks ps-lite gives ``nodes``, (host, port) per process of one role in launch
    order: by host name descending, then by port (ps::Van at the scheduler)."""
    order = sorted(range(len(nodes)), key=lambda i: nodes[i][1])
    order.sort(key=lambda i: nodes[i][0], reverse=True)
    ranks = [0] * len(nodes)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return ranks


def _sync(hosts, local_dir, remote_dir):
    """Copy ``local_dir`` to ``remote_dir`` on each host (rsync over ssh); ValueError if rsync
    is missing or fails."""
    if shutil.which('rsync') is None:
        raise ValueError('--sync-dst-dir needs rsync, which is not found on PATH: install it '
                         '(here and on the hosts) or copy the directory yourself')
    for host, port in sorted(set(hosts)):
        rsh = ' '.join(shlex.quote(a) for a in _SSH + ['-p', port])
        result = subprocess.run(['rsync', '-az', '--protect-args', '--rsh', rsh,
                                 local_dir.rstrip('/') + '/', '%s:%s' % (host, remote_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if result.returncode:
            raise ValueError('--sync-dst-dir: rsync to %s:%s failed with status %d: %s'
                             % (host, remote_dir, result.returncode,
                                result.stdout.decode(errors='replace').strip()))


def launch_ssh(command, hosts, num_workers, num_servers=1, timeout=3600, host_ip=None,
               sync_dst_dir=None, env=None, out=None):
    """Run one parameter-server job over ssh: the scheduler on this machine, the servers and
    then the workers on ``hosts`` in turn (as dmlc_tracker's ssh back end places them), each as
    ``python -m namsg_dist run -- ...`` with this machine's Python path, in this directory (or
    ``sync_dst_dir``, copied there first).

    Every path and argument is quoted for the remote shell. The job behaves as
    :func:`launch_local`'s: output labelled by role and rank, the first failing process ends the
    job with its status, ``timeout`` bounds it, and a stop signal ends every process, here and on
    the hosts (each remote process ends with its ssh connection, which ssh without a terminal
    does not do). ssh runs with ``BatchMode=yes`` (a password prompt would wait for ever) and
    ``StrictHostKeyChecking=no``, as dmlc_tracker runs it.

    Parameters
    ----------
    command : list of str
        The worker's program and arguments.
    hosts : list of tuple
        (host, ssh port) pairs of str, e.g. from :func:`read_hosts`; each host's address as this machine
        resolves it is the node's ``DMLC_NODE_HOST`` (ps-lite binds to it).
    num_workers : int
        Worker processes (the ranks of the job), >= 1.
    num_servers : int, default 1
        Server processes, >= 1 (each holds a share of the parameters).
    timeout : float, default 3600
        Seconds before the job is ended (status 124), > 0.
    host_ip : str or None, default None
        This machine's address as the hosts see it (the scheduler's); None guesses it as
        dmlc_tracker does.
    sync_dst_dir : str or None, default None
        Copy this directory there on every host first (rsync over ssh) and run there.
    env : dict or None, default None
        Variables for every process of the job. The hosts get these, the job's ``DMLC_*``
        variables, and this environment's ``OMP_NUM_THREADS``, ``KMP_AFFINITY``,
        ``LD_LIBRARY_PATH``, ``PYTHONPATH``, ``DMLC_INTERFACE`` and those starting with
        ``MXNET_``, ``NAMSG_`` or ``PS_`` (ssh passes no environment; a command line is visible
        to every user of both machines, so nothing else is sent).
    out : file or None, default None
        Where the labelled output goes (default stdout).

    Returns
    -------
    int
        0 when every worker exited 0; else the first non-zero status of a process (255: ssh
        could not reach its host or lost the connection, said on a line of its own), 124 on
        timeout, 128 + N after signal N of :data:`STOP_SIGNALS`.

    Raises
    ------
    ValueError
        Before anything starts: no worker, server or host, a ``timeout`` that is not > 0, no
        ssh client, or a failed copy to ``sync_dst_dir`` (or no rsync).
    """
    _check_job(num_workers, num_servers, timeout)
    if not hosts:
        raise ValueError('an ssh job needs at least one host')
    if shutil.which('ssh') is None:
        raise ValueError('--launcher ssh needs the ssh client, which is not found on PATH')
    working_dir = os.getcwd()
    if sync_dst_dir:
        _sync(hosts, working_dir, sync_dst_dir)
        working_dir = sync_dst_dir
    host_ip = host_ip or _this_machines_address()
    local = dict(os.environ, **(env or {}))
    passed, quiet = _pslite_verbosity(
        {k: v for k, v in local.items()
         if k in _PASSED or k.startswith(_PASSED_PREFIXES) or k in (env or {})})
    common = dict(DMLC_PS_ROOT_URI=host_ip, DMLC_PS_ROOT_PORT=str(_free_port()),
                  DMLC_NUM_WORKER=str(num_workers), DMLC_NUM_SERVER=str(num_servers),
                  DMLC_JOB_CLUSTER='ssh', **{SERVERS_ENV: '1'})
    processes = [_Process('scheduler', 0, _server_command(),
                          dict(local, DMLC_ROLE='scheduler', **common))]
    hosts = [hosts[i % len(hosts)] for i in range(num_servers + num_workers)]
    ports = _free_ports(len(hosts))     # free here; on a host ps-lite takes another if need be
    # ps-lite binds a node to its DMLC_NODE_HOST, which must be an address, not a host name.
    addresses = {host: _address(host) for host, _ in hosts}
    for role, first, count, argv in (('server', 0, num_servers, _server_command()),
                                     ('worker', num_servers, num_workers,
                                      _server_command() + list(command))):
        nodes = [(addresses[hosts[i][0]], ports[i]) for i in range(first, first + count)]
        for (address, port), (host, ssh_port), rank in zip(nodes, hosts[first:first + count],
                                                           _ps_ranks(nodes)):
            remote_env = dict(passed, DMLC_ROLE=role, DMLC_NODE_HOST=address,
                              DMLC_TASK_ID=str(rank), PORT=str(port), **common)
            remote = 'exec env %s /bin/sh -c %s namsg_dist %s' % (
                ' '.join(shlex.quote('%s=%s' % kv) for kv in sorted(remote_env.items())),
                shlex.quote(_REMOTE_SCRIPT), ' '.join(map(shlex.quote, [working_dir] + argv)))
            processes.append(_Process(role, rank, _SSH + ['-p', ssh_port, host, remote], local,
                                      host=host))
    return _run_job(processes, timeout, out or sys.stdout, quiet)


def _launch_with_dmlc_tracker(args, command):
    """mpi: dmlc_tracker's back end, each process running ``run -- command``, every argument
    quoted for the shell that dmlc_tracker hands the joined command line to.
    dmlc_tracker.submit is not imported: it imports the kubernetes client at load time."""
    if not hasattr(threading.Thread, 'isAlive'):      # removed in Python 3.9; dmlc_tracker uses it
        threading.Thread.isAlive = threading.Thread.is_alive
    backend = importlib.import_module('dmlc_tracker.%s' % args.launcher)
    from dmlc_tracker import opts
    wrapped = [shlex.quote(a) for a in _server_command() + command]
    argv = ['--cluster', args.launcher, '--num-workers', str(args.num_workers),
            '--num-servers', str(args.num_servers)]
    if args.hostfile:
        argv += ['--host-file', args.hostfile]
    if args.host_ip:
        argv += ['--host-ip', args.host_ip]
    backend.submit(opts.get_opts(argv + wrapped))
    return 0


def _check_timeout(seconds):
    """Refuse a time limit that would end the job at once (or before it started)."""
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError('--timeout %r: the job\'s time limit must be a finite number of '
                         'seconds > 0' % (seconds,))
    return seconds


def _timeout_argument(text):
    try:
        return _check_timeout(float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError('%r: give the job\'s time limit, a number of seconds '
                                         '> 0' % (text,)) from e


def _check_hosts(parser, args):
    """ssh needs a host file, and a host file given for ssh or mpi must be readable and list
    hosts: checked before anything starts. Returns the hosts (read_hosts), or None."""
    if args.launcher == 'ssh' and args.hostfile is None:
        parser.error('--launcher ssh needs -H/--hostfile FILE, a file with one host per line')
    if args.hostfile is None:
        return None
    try:
        return read_hosts(args.hostfile)
    except ValueError as e:
        parser.error(str(e))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='python -m namsg_dist', description=(
        'Parameter-server jobs whose servers can load namsg optimizers.'))
    sub = parser.add_subparsers(dest='action', required=True)
    run_parser = sub.add_parser('run', help='serve (scheduler/server role) or run CMD (worker)')
    run_parser.add_argument('command', nargs=argparse.REMAINDER, help='-- CMD ...')
    launch = sub.add_parser('launch', help='launch a whole job',
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    launch.add_argument('-n', '--num-workers', type=int, required=True, help='worker processes')
    launch.add_argument('-s', '--num-servers', type=int, default=1, help='server processes')
    launch.add_argument('--launcher', default='local', choices=('local', 'ssh', 'mpi'),
                        help='where the processes run')
    launch.add_argument('--timeout', type=_timeout_argument, default=3600,
                        help='seconds before the job is ended (local and ssh), > 0')
    launch.add_argument('-H', '--hostfile', default=None,
                        help='ssh/mpi: file with one host per line')
    launch.add_argument('--host-ip', default=None,
                        help='ssh/mpi: this machine\'s address as the other hosts see it')
    launch.add_argument('--sync-dst-dir', default=None,
                        help='ssh: copy the working directory to this path on every host')
    launch.add_argument('command', nargs=argparse.REMAINDER, help='-- CMD ...')
    args = parser.parse_args(argv)
    if args.command and args.command[0] == '--':
        args.command = args.command[1:]
    if args.action == 'launch':
        args.hosts = _check_hosts(launch, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.action == 'run':
        return run(args.command)
    if not args.command:
        raise SystemExit('namsg_dist launch: give the worker command after --')
    try:
        if args.launcher == 'local':
            return launch_local(args.command, args.num_workers, args.num_servers, args.timeout)
        if args.launcher == 'ssh':
            return launch_ssh(args.command, args.hosts, args.num_workers, args.num_servers,
                              args.timeout, args.host_ip, args.sync_dst_dir)
    except (ValueError, RuntimeError) as e:      # RuntimeError: an incomplete installation
        raise SystemExit('namsg_dist launch: %s' % e)
    return _launch_with_dmlc_tracker(args, args.command)


if __name__ == '__main__':
    sys.exit(main())
