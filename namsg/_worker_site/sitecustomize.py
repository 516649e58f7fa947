"""The workers' ``sitecustomize`` module: ``python -m namsg_dist`` puts this folder first on the
PYTHONPATH of every worker it starts (``launch`` on this machine, ``run -- CMD`` under any
launcher). In a worker (``DMLC_ROLE=worker``) it installs
``namsg_dist.install_worker_exit_hooks()`` at interpreter start, whether the program imports
namsg or not; then it runs the ``sitecustomize`` module it hides, if there is one. Nothing
imports it by name (this folder is not a package)."""
import importlib.machinery
import importlib.util
import os
import sys


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_here = os.path.dirname(os.path.abspath(__file__))
if os.environ.get('DMLC_ROLE') == 'worker':
    # namsg_dist.py sits beside the namsg package, installed or in a source tree; loaded by
    # path, as the worker's sys.path need not reach it.
    (sys.modules.get('namsg_dist') or _load(
        'namsg_dist', os.path.join(os.path.dirname(os.path.dirname(_here)), 'namsg_dist.py'))
     ).install_worker_exit_hooks()
_spec = importlib.machinery.PathFinder.find_spec(
    'sitecustomize', [p for p in sys.path if os.path.abspath(p or os.curdir) != _here])
if _spec is not None and _spec.origin:
    _load('sitecustomize', _spec.origin)
