#!/usr/bin/env bash
# Horovod for the Horovod tests: installs Horovod 0.28.1 built for the project's MXNet into .venv
# (from a wheel cached in $NAMSG_CI_CACHE, default ~/.cache/namsg-ci, else built there: about
# 8 minutes on 2 cores), for tests/test_horovod.py, which `make test` runs. A failed build fails
# the job, with the end of the build log; it never turns into skipped tests.
set -euo pipefail
cd "$(dirname "$0")/.."
make install
PY=.venv/bin/python
VERSION=0.28.1
tag=$($PY -c 'import sys, mxnet; print("mxnet%s-cp%d%d" % ((mxnet.__version__,) + sys.version_info[:2]))')
cache="${NAMSG_CI_CACHE:-$HOME/.cache/namsg-ci}/horovod-$VERSION-$tag"

if ! $PY -c 'import horovod.mxnet' 2>/dev/null; then
    # Horovod's run-time dependencies, and what its build imports (--no-build-isolation).
    $PY -m pip install --quiet wheel setuptools cloudpickle psutil pyyaml packaging
    wheel=$(ls "$cache"/horovod-$VERSION-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        mkdir -p "$cache"
        echo "horovod.sh: building Horovod $VERSION for $tag into $cache (about 8 minutes)"
        start=$(date +%s)
        if ! HOROVOD_WITH_MXNET=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
                HOROVOD_WITHOUT_MPI=1 HOROVOD_WITH_GLOO=1 \
                $PY -m pip wheel --no-build-isolation --no-deps "horovod==$VERSION" \
                -w "$cache" > "$cache/build.log" 2>&1; then
            tail -n 40 "$cache/build.log"
            echo "horovod.sh: error: building Horovod $VERSION for $tag failed (log above, whole" \
                 "log in $cache/build.log); the Horovod tests cannot run" >&2
            exit 1
        fi
        echo "horovod.sh: built in $(( $(date +%s) - start )) s"
        wheel=$(ls "$cache"/horovod-$VERSION-*.whl | head -n 1)
    fi
    $PY -m pip install --quiet --no-deps "$wheel"
fi
if ! $PY -c 'import horovod.mxnet as hvd; assert hvd.gloo_built()'; then
    echo "horovod.sh: error: horovod.mxnet does not import, or lacks Gloo, in .venv" >&2
    exit 1
fi
