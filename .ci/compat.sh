#!/usr/bin/env bash
# namsg in a user's own MXNet environment (issue 12), on the older MXNet releases. For each one: a
# venv holding only that MXNet and numpy<1.24, as a user's pipeline has it; the package installed
# into it with its dependencies, from the wheel that `python -m build` makes (on 1.8 from its sdist
# and from the clone too); pip must leave every package there as it was and add only namsg (no
# MXNet change, none of the experiment packages). Then, against that installed copy: the optimizer
# parity tests and the Trainer and Module tests against the NumPy reference, the optimizers'
# constructors and settings, the NDArray path's operator forms and what an update call remembers,
# on both paths: the fused path is the direct call on every release
# (test_the_path_taken_and_why_is_said_once checks it), and 1.7 and 1.8 run the parity, build,
# cache and isolation tests of their extension operator too (built against their own
# lib_api.h); the install tests that need no extra; and one 2-worker parameter-server job
# (namsg_dist; its processes take the clone's namsg). Each run says which path ARSG took. Last,
# in the same venv once those checks are done, the experiments extra and the paper's scripts
# (check_experiments; about 45 s a release).
# pip's cache (~/.cache/pip) is reused; each venv is made anew. MXNet 1.9.1 runs the whole suite
# in `make test`. NAMSG_COMPAT_MXNET="1.6.0 ..." picks the releases.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
VERSIONS=${NAMSG_COMPAT_MXNET:-1.5.1 1.6.0 1.7.0.post2 1.8.0.post0}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 NAMSG_KERNEL_CACHE=$WORK/kernels

fail() { echo "compat: $*" >&2; exit 1; }

"$PYTHON" -m venv "$WORK/build"
"$WORK/build/bin/pip" install --quiet build
"$WORK/build/bin/python" -m build --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 ||
    { tail -n 30 "$WORK/build.log"; fail 'python -m build failed'; }
WHEEL=$(echo "$WORK"/dist/namsg-*.whl)
SDIST=$(echo "$WORK"/dist/namsg-*.tar.gz)

# Install $2 into venv $1 and check that every package that was there is still there at the
# same version and that the only one added is namsg.
install_leaves_the_rest() {
    local venv=$1 what=$2 before after added
    before=$("$venv/bin/pip" freeze --all)
    "$venv/bin/pip" install --quiet "$what"
    after=$("$venv/bin/pip" freeze --all)
    added=$(comm -13 <(sort <<< "$before") <(sort <<< "$after"))
    comm -23 <(sort <<< "$before") <(sort <<< "$after") | grep . &&
        fail "installing $what changed or removed the packages above"
    # One line: namsg==V, or namsg @ file://... when pip installed it from a path.
    [[ $added =~ ^namsg(==| @ )[^$'\n']*$ ]] ||
        fail "installing $what added more than namsg: $added"
    echo "compat: $what into $(basename "$venv"): nothing changed, added $added"
}

# The paper's scripts on this release (issue 12's `pip install namsg[experiments]`), in venv $1
# once the install checks above are done with it: the extra added (pip's cache; --no-compile
# saves most of its time) without a change to MXNet or numpy; the training loop's tests (resume
# included), the networks' and those of MXNet 1.5 and 1.6's missing names (--kvstore horovod
# refused); then the clone's scripts on the installed package: reproduce_mnist.py on the
# embedded sample (every method, 3 epochs of mnist_logreg), plot_results.py on its logs, a tiny
# grid_search.py and reproduce_cifar10.py --help (no CIFAR-10 data or training).
check_experiments() {
    local venv=$1 version=$2 start=$SECONDS kept runs=$WORK/runs-$2
    kept=$("$venv/bin/pip" freeze | grep -E '^(mxnet|numpy)==')
    "$venv/bin/pip" install --quiet --no-compile "$WHEEL[experiments]"
    [[ $("$venv/bin/pip" freeze | grep -E '^(mxnet|numpy)==') == "$kept" ]] ||
        fail 'the experiments extra changed mxnet or numpy'
    (cd tests && "$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" \
        test_old_mxnet.py test_models.py test_train.py)
    (cd "$WORK" && env -u NAMSG_DATA_DIR "$venv/bin/python" "$ROOT/scripts/reproduce_mnist.py" \
        --settings mnist_logreg --scale 0.15 --no-progress --log-dir "$runs/mnist" &&
     "$venv/bin/python" -c 'import sys
from pathlib import Path
import mxnet
from namsg.experiments.hparams import METHODS
from namsg.experiments.logs import read_log
for method in METHODS:
    header, records = read_log(Path(sys.argv[1]) / "mnist_logreg" / method / "seed0.jsonl")
    assert header["versions"]["mxnet"] == mxnet.__version__, header["versions"]
    assert [r["epoch"] for r in records] == [1, 2, 3], (method, records)' "$runs/mnist" &&
     "$venv/bin/python" "$ROOT/scripts/plot_results.py" --log-dir "$runs/mnist" \
        --out-dir "$runs/plots" && [[ -s $runs/plots/mnist_logreg.png ]] &&
     env -u NAMSG_DATA_DIR "$venv/bin/python" "$ROOT/scripts/grid_search.py" --methods ARSG \
        --epochs 1 --subset 512 --search-iterations 4 --log-dir "$runs/grid" &&
     "$venv/bin/python" "$ROOT/scripts/reproduce_cifar10.py" --help) > "$runs.log" 2>&1 ||
        { tail -n 30 "$runs.log"; fail "mxnet $version: the experiment scripts failed"; }
    echo "compat: mxnet $version: the experiments extra, its tests and scripts: $((SECONDS - start)) s"
}

for version in $VERSIONS; do
    venv=$WORK/mxnet-$version
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet "mxnet==$version" 'numpy<1.24'
    forms=("$WHEEL")
    # The issue's scenario: all three. An array, as the clone's path may hold spaces.
    [[ $version == 1.8.* ]] && forms=("$WHEEL" "$SDIST" "$ROOT")
    for form in "${forms[@]}"; do
        install_leaves_the_rest "$venv" "$form"
        "$venv/bin/pip" uninstall --quiet --yes namsg
    done
    "$venv/bin/pip" install --quiet "$WHEEL[test]"
    [[ $("$venv/bin/pip" freeze) == *"mxnet==$version"* ]] || fail 'the test extra changed mxnet'
    # The path ARSG takes here, as the package reports it (once, on stderr).
    path=$(cd "$WORK" && "$venv/bin/python" -c 'import logging, warnings
logging.basicConfig(level=logging.INFO, format="%(message)s")
warnings.simplefilter("always")
import namsg
print(namsg.kernels.use_fused(None))' 2>&1 | grep -E 'operator path|direct-call path|NDArray path' |
        sed 's/.*namsg: /namsg: /' || true)
    echo "compat: mxnet $version: $path"
    # From tests/, so that `import namsg` finds the installed copy, not the clone's.
    [[ $path == *'ARSG takes the fused direct-call path (MXNet '* ]] ||
        fail "mxnet $version: expected the fused direct-call path"
    tests=(test_parity.py test_gluon.py test_ops.py test_optimizer.py test_call_memo.py
           test_kernels.py test_kernel_isolation.py test_direct.py)
    (cd tests && "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider --rootdir "$ROOT" \
        "${tests[@]}" \
        test_install.py::test_import_without_mxnet_says_which_package_to_install \
        test_install.py::test_unsupported_mxnet_release_is_refused_with_the_supported_range \
        'test_dist.py::test_settings_and_multipliers_reach_the_servers[arsg-set_learning_rate]')
    (cd "$WORK" && "$venv/bin/python" -c \
        'import namsg, sys; sys.exit(namsg.__file__.startswith(sys.argv[1]))' "$ROOT/") ||
        fail 'the tests would import the clone, not the installed package'
    check_experiments "$venv" "$version"
    rm -rf "$venv"
done
