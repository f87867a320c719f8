#!/usr/bin/env bash
# make check-gpu: what a GPU machine can say about axiswatch, in one command (docs/vllm.md, GPU check).
# 1. the monitor's op under CUDA graphs vs eager, and the hf backend on CUDA vs CPU (no vLLM needed);
# 2. where vLLM's CUDA build installs (make's .venv-vllm, vLLM's CUDA wheel): the vLLM tests, the GPU tests and
#    the serving benchmark, compiled with CUDA graphs on. Writes runs/gpu/ and prints a short report.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "check-gpu: no NVIDIA GPU here (nvidia-smi not found); nothing to check" >&2
    exit 1
fi
out=runs/gpu
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
status=0
.venv/bin/python bench/gpu_check.py --out "$out/gpu_check.json" > "$out/gpu_check.log" 2>&1 || status=1
.venv/bin/python -m pytest -q -m gpu tests/test_gpu.py -k "not vllm" > "$out/pytest_gpu.log" 2>&1 || status=1
vllm="not installed"
if make .venv-vllm/.installed > "$out/vllm_install.log" 2>&1; then
    vllm=$(.venv-vllm/bin/python -c "import vllm; print(vllm.__version__)" 2>/dev/null || echo "does not import")
    AXISWATCH_REQUIRE_VLLM=1 .venv-vllm/bin/python -m pytest -q -m "vllm or gpu" > "$out/pytest_vllm.log" 2>&1 || status=1
    tp=$([ "$(nvidia-smi -L | wc -l)" -ge 2 ] || echo --no-tp)  # two ranks need two GPUs
    .venv-vllm/bin/python bench/bench_vllm_serving.py $tp --json "$out/serving.json" > "$out/serving.log" 2>&1 || status=1
fi
echo
echo "== axiswatch GPU check =="
echo "op under CUDA graphs, hf on CUDA:  $(.venv/bin/python -c "import json; r = json.load(open('$out/gpu_check.json')); print('ok' if r['ok'] else 'FAILED', json.dumps(r['op_under_graphs']))" 2>/dev/null || echo "FAILED (see $out/gpu_check.log)")"
echo "GPU tests without vLLM:           $(tail -n 1 "$out/pytest_gpu.log")"
echo "vLLM's CUDA build:                $vllm"
if [ -f "$out/pytest_vllm.log" ]; then
    echo "vLLM and GPU tests:               $(tail -n 1 "$out/pytest_vllm.log")"
    echo "serving benchmark (graphs on):"
    sed -n '/^== /,$p' "$out/serving.log"
else
    echo "vLLM tests and serving benchmark: skipped (vLLM's CUDA build could not be installed: $out/vllm_install.log)"
fi
echo "logs: $out/"
exit "$status"
