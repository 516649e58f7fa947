"""Distributed training with MXNet's parameter server: a server entry point that can unpickle
namsg's optimizers, and a thin launcher over MXNet's own job launcher, ``dmlc_tracker``.

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
* ``launch -n W -s S [--launcher local|ssh|mpi] -- CMD...``: a whole job. ``local`` starts the
  scheduler, S servers and W workers on 127.0.0.1, forwards their output, bounds the time, and
  ends every process it started (with their process groups) on success, on the first failing
  worker, on timeout and on SIGINT, SIGTERM or SIGHUP. ``ssh`` and ``mpi`` hand the
  job, wrapped in ``run``, to dmlc_tracker's back ends for several machines.
"""

import argparse
import contextlib
import importlib
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

__all__ = ['serve', 'launch_local', 'main']

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

    ``import namsg`` installs this in a process with ``DMLC_ROLE=worker``; every worker that
    ``launch`` or ``run -- CMD`` starts (on this machine or, by ``run``, under ssh, mpi or
    another launcher) installs it at interpreter start too, namsg imported or not (the
    ``sitecustomize`` module in :func:`worker_site`, on its PYTHONPATH). Installing twice
    changes nothing."""
    if getattr(sys.exit, '_namsg_worker_exit', False):
        return
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


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _role_env(role, num_workers, num_servers, port, task_id, extra=None):
    """The environment dmlc_tracker gives each process of a job (see dmlc_tracker.tracker);
    a worker also gets :func:`worker_site` first on its PYTHONPATH."""
    env = dict(os.environ, **(extra or {}))
    env.update(DMLC_ROLE=role, DMLC_PS_ROOT_URI='127.0.0.1', DMLC_PS_ROOT_PORT=str(port),
               DMLC_NUM_WORKER=str(num_workers), DMLC_NUM_SERVER=str(num_servers),
               DMLC_TASK_ID=str(task_id), DMLC_JOB_CLUSTER='local', **{SERVERS_ENV: '1'})
    # ps-lite picks the interface from these; loopback keeps the job on this machine.
    env.setdefault('DMLC_NODE_HOST', '127.0.0.1')
    env.setdefault('DMLC_INTERFACE', 'lo')
    return _with_worker_site(env) if role == 'worker' else env


def _forward(stream, prefix, out):
    for line in iter(stream.readline, b''):
        out.write(prefix + line.decode(errors='replace'))
        out.flush()


#: Signals that end a local job (batch schedulers, ``timeout`` and containers send SIGTERM; a
#: closed terminal SIGHUP); the launcher then exits with 128 + the signal's number.
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


def _kill_groups(procs, sig):
    # Every child leads its own process group (start_new_session): the signal also reaches
    # what it started, even after the child itself has exited.
    for _, _, proc in procs:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def _end(procs):
    """SIGTERM to every process group of the job, SIGKILL to those still there after 5 s. A
    further stop signal meanwhile kills at once, so nothing is left behind."""
    with _signal_handlers(lambda signum, frame: _kill_groups(procs, signal.SIGKILL)):
        _kill_groups(procs, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _, _, proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        _kill_groups(procs, signal.SIGKILL)
        for _, _, proc in procs:
            proc.wait()


def launch_local(command, num_workers, num_servers=1, timeout=600, env=None, out=None):
    """Run one job on this machine: scheduler, servers (``python -m namsg_dist run``) and
    workers (``command``), all on 127.0.0.1. Output lines are forwarded with a
    ``[worker 0]``-style prefix to ``out`` (default stdout).

    Raises ValueError, before starting anything, for a job without workers or servers, a
    ``timeout`` that is not > 0 seconds or a ``command`` whose program is not found. Returns 0
    when every worker exited 0; otherwise the first non-zero status of a worker, the scheduler
    or a server (128 + N for one killed by signal N; the job ends as soon as one fails), 124 on
    timeout, or 128 + N after signal N of :data:`STOP_SIGNALS` (when called from the main
    thread). Every process started, and every process in their process groups, is ended before
    returning. Python workers install :func:`install_worker_exit_hooks` at start, so that one
    ending with an error does not hang the job."""
    if num_workers < 1 or num_servers < 1:
        raise ValueError('a parameter-server job needs >= 1 worker and >= 1 server, got '
                         '%d workers and %d servers' % (num_workers, num_servers))
    _check_timeout(timeout)
    _check_command(command)
    worker_site()
    out = out or sys.stdout
    port = _free_port()
    server_cmd = [sys.executable, '-m', 'namsg_dist', 'run', '--']
    plan = [('scheduler', 0, server_cmd)] + \
        [('server', i, server_cmd) for i in range(num_servers)] + \
        [('worker', i, list(command)) for i in range(num_workers)]
    procs, threads, stopped = [], [], []
    deadline = time.monotonic() + timeout
    status = 0
    # A stop signal only sets a flag: the loops below check it, so the cleanup never starts
    # between a Popen and the bookkeeping of its process.
    with _signal_handlers(lambda signum, frame: stopped.append(signum)):
        try:
            for role, index, cmd in plan:
                if stopped:
                    break
                proc = subprocess.Popen(
                    cmd, env=_role_env(role, num_workers, num_servers, port, index, env),
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
                procs.append((role, index, proc))
                thread = threading.Thread(target=_forward, daemon=True,
                                          args=(proc.stdout, '[%s %d] ' % (role, index), out))
                thread.start()
                threads.append(thread)
            while not stopped:
                # Every process, every time (any() would stop early): the first one that ended
                # with an error, a worker or the scheduler or a server (then the workers would
                # wait for it for ever), ends the job.
                codes = [(role, index, p.poll()) for role, index, p in procs]
                failed = next(((role, index, code) for role, index, code in codes if code), None)
                if failed:
                    role, index, code = failed
                    status = code if code > 0 else 128 - code
                    out.write('namsg_dist: %s %d exited with status %d; ending the job\n'
                              % (role, index, status))
                    break
                if None not in [code for role, _, code in codes if role == 'worker']:
                    break
                if time.monotonic() > deadline:
                    out.write('namsg_dist: the job exceeded %d s; ending it\n' % timeout)
                    status = 124
                    break
                time.sleep(0.1)
            # Servers and the scheduler leave by themselves once every worker is done.
            grace = time.monotonic() + max(1.0, min(30.0, deadline - time.monotonic()))
            while not status and not stopped and time.monotonic() < grace and \
                    any(p.poll() is None for _, _, p in procs):
                time.sleep(0.1)
        finally:
            _end(procs)
            for thread in threads:
                thread.join(timeout=2)
    if stopped:
        out.write('namsg_dist: got signal %d; ended the job\n' % stopped[0])
        return 128 + stopped[0]
    return status


def _launch_with_dmlc_tracker(args, command):
    """ssh / mpi: dmlc_tracker's own back ends, each process running ``run -- command``.
    dmlc_tracker.submit is not imported: it imports the kubernetes client at load time."""
    if not hasattr(threading.Thread, 'isAlive'):      # removed in Python 3.9; dmlc_tracker uses it
        threading.Thread.isAlive = threading.Thread.is_alive
    backend = importlib.import_module('dmlc_tracker.%s' % args.launcher)
    from dmlc_tracker import opts
    wrapped = [sys.executable, '-m', 'namsg_dist', 'run', '--'] + command
    argv = ['--cluster', args.launcher, '--num-workers', str(args.num_workers),
            '--num-servers', str(args.num_servers)]
    if args.hostfile:
        argv += ['--host-file', args.hostfile]
    if args.host_ip:
        argv += ['--host-ip', args.host_ip]
    if args.sync_dst_dir:
        argv += ['--sync-dst-dir', args.sync_dst_dir]
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
    """ssh needs a host file (dmlc_tracker only asserts it), and a host file given for ssh or
    mpi must be readable and list a host: checked before dmlc_tracker starts anything."""
    if args.launcher == 'ssh' and args.hostfile is None:
        parser.error('--launcher ssh needs -H/--hostfile FILE, a file with one host per line')
    if args.hostfile is None:
        return
    try:
        with open(args.hostfile) as hosts:
            listed = [line for line in hosts if line.strip()]
    except OSError as e:
        parser.error('-H/--hostfile %s cannot be read (%s): give a file with one host per '
                     'line' % (args.hostfile, e.strerror or e))
    if not listed:
        parser.error('-H/--hostfile %s lists no host: give one host per line' % args.hostfile)


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
                        help='seconds before a local job is ended, > 0')
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
        _check_hosts(launch, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.action == 'run':
        return run(args.command)
    if not args.command:
        raise SystemExit('namsg_dist launch: give the worker command after --')
    if args.launcher == 'local':
        try:
            return launch_local(args.command, args.num_workers, args.num_servers, args.timeout)
        except ValueError as e:
            raise SystemExit('namsg_dist launch: %s' % e)
    return _launch_with_dmlc_tracker(args, args.command)


if __name__ == '__main__':
    sys.exit(main())
