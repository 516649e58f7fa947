#!/usr/bin/env bash
# Horovod for the Horovod tests: installs Horovod 0.28.1 built for the project's MXNet into .venv
# (from a wheel cached in $NAMSG_CI_CACHE, default ~/.cache/namsg-ci, else built there: about
# 8 minutes on 2 cores), for tests/test_horovod.py, which `make test` runs. A failed build fails
# the job, with the end of the build log; it never turns into skipped tests.
#
# Horovod's library records the libmxnet.so it was built against (its RUNPATH names that
# library's directory), so a wheel serves one venv and one MXNet build only: the cached wheel is
# keyed by the library's real path and contents, pip's own wheel cache (which keys a build by
# the source alone, and so handed one venv's build to another) is not used, and after the
# install the script checks that Horovod's library resolves this venv's libmxnet.so.
#
# Built from Horovod's source with one line of its cmake/Modules/FindMxnet.cmake removed: that
# line splits the path of libmxnet.so at spaces, so that in a venv at a path with a space make
# fails with "No rule to make target '/tmp/new'". The source is unpacked and built in a directory
# of /tmp (no space); MAKEFLAGS=-j2 (Horovod's setup.py runs make -j8 otherwise), under nice.
set -euo pipefail
cd "$(dirname "$0")/.."
make install
PY=.venv/bin/python
VERSION=0.28.1
lib=$($PY -c 'import os, mxnet.libinfo as i; print(os.path.realpath(i.find_lib_path()[0]))')
key=$({ printf '%s\n' "$lib"; sha256sum < "$lib"; $PY -c 'import sys; print(sys.version)'; } |
      sha256sum | cut -c1-16)
tag=$($PY -c 'import sys, mxnet; print("mxnet%s-cp%d%d" % ((mxnet.__version__,) + sys.version_info[:2]))')
cache="${NAMSG_CI_CACHE:-$HOME/.cache/namsg-ci}/horovod-$VERSION-$tag-$key"

# Whether the installed Horovod loads, has Gloo, and uses this venv's libmxnet.so: as the
# dynamic linker resolves its library (ldd) and as a process that imports it maps it.
links_this_venv() {
    local so resolved
    so=$($PY -c 'import glob, os, horovod; print(glob.glob(os.path.join(os.path.dirname(
        horovod.__file__), "mxnet", "mpi_lib*.so"))[0])' 2>/dev/null) || return 1
    resolved=$(ldd "$so" | sed -n 's/^[[:space:]]*libmxnet\.so => \(.*\) (0x[0-9a-f]*)$/\1/p')
    if [ -z "$resolved" ] || [ "$(realpath "$resolved")" != "$lib" ]; then
        echo "horovod.sh: $so resolves libmxnet.so to '${resolved:-nothing}', not $lib" >&2
        return 1
    fi
    LIB="$lib" $PY -c '
import os, horovod.mxnet as hvd
assert hvd.gloo_built(), "Horovod was built without Gloo"
mapped = {line.split(None, 5)[-1].strip() for line in open("/proc/self/maps")
          if line.rstrip().endswith("/libmxnet.so")}
assert {os.path.realpath(p) for p in mapped} == {os.environ["LIB"]}, mapped
'
}

if ! links_this_venv 2>/dev/null; then
    # Horovod's run-time dependencies, and what its build imports (--no-build-isolation).
    $PY -m pip install --quiet wheel setuptools cloudpickle psutil pyyaml packaging
    wheel=$(ls "$cache"/horovod-$VERSION-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        mkdir -p "$cache"
        echo "horovod.sh: building Horovod $VERSION for $lib into $cache (about 8 minutes)"
        start=$(date +%s)
        work=$(mktemp -d /tmp/namsg-horovod.XXXXXX)
        trap 'rm -rf "$work"' EXIT
        if ! {
            $PY -m pip download --no-cache-dir --no-deps --no-binary :all: \
                "horovod==$VERSION" -d "$work" &&
            tar -xzf "$work/horovod-$VERSION.tar.gz" -C "$work" &&
            sed -i '/string(REPLACE " " ";" Mxnet_LIBRARIES/d' \
                "$work/horovod-$VERSION/cmake/Modules/FindMxnet.cmake" &&
            HOROVOD_WITH_MXNET=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
                HOROVOD_WITHOUT_MPI=1 HOROVOD_WITH_GLOO=1 MAKEFLAGS=-j2 \
                nice $PY -m pip wheel --no-cache-dir --no-build-isolation --no-deps \
                "$work/horovod-$VERSION" -w "$cache"
        } > "$cache/build.log" 2>&1; then
            tail -n 40 "$cache/build.log"
            echo "horovod.sh: error: building Horovod $VERSION for $lib failed (log above, whole" \
                 "log in $cache/build.log); the Horovod tests cannot run" >&2
            exit 1
        fi
        echo "horovod.sh: built in $(( $(date +%s) - start )) s"
        wheel=$(ls "$cache"/horovod-$VERSION-*.whl | head -n 1)
    fi
    $PY -m pip install --quiet --no-cache-dir --no-deps --force-reinstall "$wheel"
fi
if ! links_this_venv; then
    echo "horovod.sh: error: horovod.mxnet in .venv does not import, lacks Gloo, or does not use" \
         "this venv's $lib (see above)" >&2
    exit 1
fi
