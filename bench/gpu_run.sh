#!/usr/bin/env bash
# One GPU call: install the peer wheels, run the kernel tests at real shapes, then the benchmark
# cases named in the arguments (ours and the peer, same machine, same run). Logs land in $OUT.
# Usage (device machine, repo root): bash bench/gpu_run.sh [--no-tests] [CASE_SUBSTRING ...]
# Carry .gpu-wheels (a copy of ../shared/gpu/wheels) and, if present, .tcache-parts.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.tcache TRITON_CACHE_AUTOTUNING=1
# a Triton cache (autotune results included) from earlier calls, carried as .tcache-parts/: the
# gzip parts a call returns, or several calls' caches merged and recompressed with xz (smaller)
if ls .tcache-parts/tcache.txz.part* >/dev/null 2>&1; then cat .tcache-parts/tcache.txz.part* | tar xJf -
elif ls .tcache-parts/tcache.tgz.part* >/dev/null 2>&1; then cat .tcache-parts/tcache.tgz.part* | tar xzf -; fi
python3 -m pip install -q --no-index --no-deps --no-compile --target .peer-site .gpu-wheels/*.whl \
  && touch .peer-site/selective_scan_cuda.py || exit 1
export PYTHONPATH=$PWD/.peer-site:$PWD
python3 -c "import pytest" 2>/dev/null || {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tsite .gpu-wheels/test/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/tsite; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -m biomamba.cli env 2>&1; } | tee "$OUT/env.log"  # the versions, for RESULTS.md
if [ "${1:-}" = "--no-tests" ]; then shift; else
  t0=$(date +%s)
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest ${TESTS:-tests/test_train_cuda_graph.py tests/test_kernels_triton.py tests/test_kernels_mamba_ssm.py} -v -p no:cacheprovider -o addopts= -rfs 2>&1 \
    | tee "$OUT/tests.log" | tail -25
  echo "tests took $(( $(date +%s) - t0 )) s"
fi
CASE_TIMEOUT=${CASE_TIMEOUT:-240} timeout ${BENCH_TIMEOUT:-420} python3 bench/gpu_bench.py "$@" 2>&1 \
  | grep -v '^RESULT ' | tee "$OUT/bench.log" | tail -40
# in parts under the 16 MiB a returned file may have; copy them into .tcache-parts/ (git-ignored)
# and carry that folder next time: the peer's autotuning then costs nothing
# (RETURN_TCACHE=0: not this time; a call returns at most 8 files, and the logs come first)
[ "${RETURN_TCACHE:-1}" = 1 ] && tar czf - .tcache 2>/dev/null | split -b 15m - "$OUT/tcache.tgz.part"; ls -la "$OUT"
