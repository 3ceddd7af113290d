#!/usr/bin/env bash
# The GPU check: the GPU test variants (one run per backend, each with a JUnit
# report and a failure summary), the PyTorch adapter's CUDA test, and the norm
# methods timed against the two-liner on each GPU backend, and `convsv analyze --device cuda`
# on each GPU backend, in under 9 minutes.
# For a machine with CUDA, torch, JAX and CuPy installed and no package index:
# wheels of anything missing (array-api-compat) go in .whl/ beforehand.
# Logs and reports land in $OUT (default /tmp/convsv-gpu).
# DRY_RUN=1, on any machine: only collect the GPU test variants and load the scripts, so that a
# broken import or path is found before the metered GPU time is spent on it.
set -uo pipefail
OUT=${OUT:-/tmp/convsv-gpu}
mkdir -p "$OUT"
if [ "${DRY_RUN:-0}" = 1 ]; then
    export PYTHONPATH=$PWD/src:${PYTHONPATH:-} CONVSV_RUN_SLOW=1
    python3 -m pytest -q --collect-only -p no:cacheprovider --ignore=tests/adapters --ignore=tests/experiments \
        -k "torch-cuda or cupy or jax-gpu" tests >"$OUT/collect.log" 2>&1 || { tail -20 "$OUT/collect.log"; exit 1; }
    python3 -m pytest -q --collect-only -p no:cacheprovider tests/adapters/test_torch.py -k cuda \
        >>"$OUT/collect.log" 2>&1 || { tail -20 "$OUT/collect.log"; exit 1; }
    grep -E "tests? collected" "$OUT/collect.log"
    python3 -c "import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]" \
        benchmarks/gpu_methods.py benchmarks/run.py || exit 1
    python3 benchmarks/run.py --help >/dev/null || exit 1
    exit 0
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# JAX must not take 75% of the GPU: torch and CuPy share it in the same processes.
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 CONVSV_RUN_SLOW=1
nvidia-smi -L
status=0
for variant in torch-cuda cupy jax-gpu; do
    echo "== $variant"
    CONVSV_REQUIRE_GPU=1 CONVSV_BACKENDS=${variant%%-*} timeout 80 python3 -m pytest -q -rf -n 8 \
        -p no:cacheprovider -p no:benchmark --junitxml="$OUT/junit-$variant.xml" \
        --ignore=tests/adapters --ignore=tests/experiments -k "$variant" tests >"$OUT/tests-$variant.log" 2>&1 || status=1
    grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests-$variant.log" | tail -15
done
echo "== torch adapter on CUDA"
timeout 40 python3 -m pytest -q -rf -p no:cacheprovider -p no:benchmark tests/adapters/test_torch.py -k cuda 2>&1 \
    | tail -15 | tee "$OUT/adapter.log" || status=1
echo "== convsv analyze on the GPU backends (the bundled model)"
for backend in torch cupy jax; do
    timeout 40 python3 -m convsv analyze src/convsv/data/digits_cnn.npz --device cuda --backend $backend --format csv \
        2>&1 | cut -d, -f1,11 | tee "$OUT/analyze-$backend.log" || status=1
done
echo "== norm methods"
timeout 70 python3 benchmarks/gpu_methods.py 2>&1 | tee "$OUT/methods.log" || status=1
echo "== benchmark suites on CUDA (quick)"
timeout 90 python3 benchmarks/run.py --device cuda --quick --suites layers,resnet32 --out "$OUT/bench" >"$OUT/bench.log" 2>&1 || status=1
exit $status
