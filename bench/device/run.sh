#!/usr/bin/env bash
# Run ON the device machine, from the repository root, with .whl carried:
#   run(command="bash bench/device/run.sh", carry=[".whl"], timeout_s=540)
# One prepared pass: install the carried wheels, graphs-vs-eager token check on the GPU,
# then bench/gpu.py (codec SNR, graphs off vs on at 1 stream, 1/16/64/128 streams of Bark-small
# shapes, Bark-large at 1 and 16). Everything is logged to $OUT/gpu.log as it goes, so a run
# cut by its timeout still brings its figures back.
set -uo pipefail
LOG="${OUT:-/tmp}/gpu.log"
exec > >(tee -a "$LOG") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
pip install -q --no-deps --no-index .whl/*.whl
pip install -q --no-deps --no-index -e . 2>/dev/null || export PYTHONPATH="$PWD"
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
timeout 120 python bench/device/check_graphs.py
cd bench && timeout 420 python gpu.py --device cuda --voices ../.whl/voices --seconds 10
