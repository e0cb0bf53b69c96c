#!/usr/bin/env bash
# The GPU check as one prepared run, for a machine with a CUDA device and a
# Python that already holds a CUDA build of torch, scikit-learn, pytest and
# hypothesis (the package itself is taken from this checkout, not installed):
#
#   bash benchmarks/gpu_check.sh            # CUDA tests, then bench_kmeans --device cuda --quick
#   BENCH_ARGS= BENCH_TIMEOUT=3600 bash benchmarks/gpu_check.sh   # the full-size benchmark
#
# Without a GPU the same tests run on a CUDA device emulated on the CPU
# (tests/fake_cuda.py: devices, generators and streams, not numerics):
#
#   TORCHKMEANS_TEST_FAKE_CUDA=1 python -m pytest -m cuda tests/test_kmeans.py ...
#
# Logs are written to $OUT when it is set, else to ./gpu_check_logs. The
# default limits (30 + 210 + 180 s, and 20 s more each to be killed) end the
# whole run inside 8 minutes. A step at its limit gets SIGINT, then SIGKILL:
# an interrupted pytest still prints the failures it has seen, where SIGTERM
# left only its progress dots.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
out="${OUT:-gpu_check_logs}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
limit() { timeout -s INT -k 20 "$@"; }

limit "${PROBE_TIMEOUT:-30}" "$python" -c "import sys, torch; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', ok and torch.cuda.get_device_name()); sys.exit(0 if ok else 3)" \
    2>&1 | tee "$out/device.txt"
probe=${PIPESTATUS[0]}
# Without a usable device every CUDA test is skipped and pytest exits 0: a
# run that checked nothing must not read as a pass.
if [ "$probe" -ne 0 ]; then
    echo "no usable CUDA device (probe: exit $probe): nothing was checked"
    exit 2
fi

# Every test that is parametrized over devices, on the GPU only: every file
# with such tests is listed (tests/test_cuda_emulated.py checks it).
limit "${TESTS_TIMEOUT:-210}" "$python" -m pytest -q -p no:cacheprovider -m cuda \
    tests/test_kmeans.py tests/test_functional.py tests/test_minibatch.py \
    tests/test_streaming.py tests/test_elbow.py tests/test_metrics.py \
    tests/test_quantizer.py tests/test_cli.py 2>&1 | tee "$out/cuda_tests.txt"
tests=${PIPESTATUS[0]}

limit "${BENCH_TIMEOUT:-180}" "$python" benchmarks/bench_kmeans.py --device cuda ${BENCH_ARGS---quick} \
    2>&1 | tee "$out/bench_cuda.txt"
bench=${PIPESTATUS[0]}

echo "cuda tests: exit $tests; benchmark: exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
