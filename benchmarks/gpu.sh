#!/usr/bin/env bash
# The GPU checks in one script: the CUDA tests, the three GPU benchmarks, then the whole suite.
#
#   OUT=/some/dir bash benchmarks/gpu.sh        # logs and JSON go to $OUT (default benchmarks/results/gpu)
#   GPU_STEPS="tests svi suite" bash benchmarks/gpu.sh   # a subset (tests svi predictive quality suite)
#
# Needs a CUDA build of torch and the package's dependencies. Where they cannot be installed
# from an index, put wheels in .whl/ (pyro-ppl, pyro-api, mnist1d, platformdirs): they are
# installed into /tmp/site. The package itself is used from the source tree (PYTHONPATH).
# Each step has its own time limit so that one slow step cannot eat the others' time.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export BAYESDISTILL_CACHE=${BAYESDISTILL_CACHE:-/tmp/bayesdistill-cache}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

GPU_STEPS=${GPU_STEPS:-tests svi predictive quality suite}
step() {  # step SECONDS NAME COMMAND...  (runs when the name's first word is in GPU_STEPS)
    local limit=$1 name=$2; shift 2
    case " $GPU_STEPS " in *" ${name%% *} "*) ;; *) return 0 ;; esac
    echo "=== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$LOG"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -c "import torch, pyro, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'pyro', pyro.__version__, 'gpu', torch.cuda.get_device_name(0))"
} 2>&1 | tee -a "$LOG"

step 150 "tests (CUDA)" python3 -m pytest -q -p no:cacheprovider -k cuda -rs \
    tests/test_cuda.py tests/test_align.py tests/distill/terms/test_base.py
step 200 "svi overhead" python3 benchmarks/svi_overhead.py --device cuda --rounds 15 --steps 50 \
    --json "$OUT/svi_overhead_cuda.json"
step 90 "predictive" python3 benchmarks/predictive.py --device cuda --rounds 15 --profile \
    --json "$OUT/predictive_cuda.json"
step 150 "quality (ELBO)" python3 benchmarks/quality.py --device cuda --seeds 0 1 2 \
    --json "$OUT/quality_cuda.json"
step 90 "quality (kl-weight 0.5)" python3 benchmarks/quality.py --device cuda --tasks cnn --seeds 0 1 2 \
    --kl-weight 0.5 --json "$OUT/quality_cuda_kl05.json"
# the whole suite last, with whatever time is left; the notebook tests need nbformat and a
# Jupyter kernel (the test extra), which a bare GPU image may lack
step 200 "suite (all tests)" python3 -m pytest -q -p no:cacheprovider -rs tests \
    --deselect tests/test_examples.py::test_notebook_runs \
    --deselect tests/test_examples.py::test_committed_notebook_has_no_outputs
echo "done $(date +%T)" | tee -a "$LOG"
