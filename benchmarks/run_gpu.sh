#!/usr/bin/env bash
# All GPU checks of the device path in one command: the gpu-marked tests, then
# the overlap benchmark. Results go to ${OUT:-benchmarks/results}.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import cupy; print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s)')"
python3 -m pytest -c /dev/null --rootdir . -m gpu tests/staging/test_device_gpu.py --noconftest -q -p no:cacheprovider -rs -W "ignore::pytest.PytestUnknownMarkWarning" -W error::DeprecationWarning 2>&1 | tee "$out/gpu_tests.txt"
tests=${PIPESTATUS[0]}
python3 benchmarks/gpu_overlap.py --out "$out" "$@" 2>&1 | tee "$out/gpu_overlap.txt"
bench=${PIPESTATUS[0]}
exit $(( tests || bench ))
