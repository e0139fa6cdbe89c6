#!/usr/bin/env bash
# All GPU checks of the device path in one command: the gpu-marked tests, the
# overlap benchmark, then the demo on the GPU. Results go to ${OUT:-benchmarks/results}.
#
# The device machine has CuPy, PyTorch and JAX but no network: the packages it
# lacks (zarr and its codecs, pytest-asyncio, ASE) travel as wheels in .whl/
# (see docs/benchmarks.md, "GPU runs"), installed here into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import cupy, numpy, zarr; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'zarr', zarr.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s)')"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# every gpu-marked test, and the docs' CuPy snippets (gpu-staging.md runs its
# CuPy block only where CuPy and a device are there)
timeout 180 python3 -m pytest -m gpu tests -q -p no:cacheprovider -p no:xdist -o addopts="--strict-markers" -rs --timeout 120 2>&1 | tee "$out/gpu_tests.txt"
tests=${PIPESTATUS[0]}
timeout 60 python3 -m pytest tests/test_docs.py -k "gpu-staging" -q -p no:cacheprovider -p no:xdist -o addopts="--strict-markers" -rs 2>&1 | tee -a "$out/gpu_tests.txt"
tests=$(( tests || PIPESTATUS[0] ))
timeout 220 python3 benchmarks/gpu_overlap.py --out "$out" "$@" 2>&1 | tee "$out/gpu_overlap.txt"
bench=${PIPESTATUS[0]}
timeout 100 python3 -m snapsink demo --device gpu --frames 300 --repeat 1 2>&1 | tee "$out/demo_gpu.txt"
demo=${PIPESTATUS[0]}
echo "tests rc=$tests bench rc=$bench demo rc=$demo"
exit $(( tests || bench || demo ))
