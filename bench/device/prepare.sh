#!/usr/bin/env bash
# Run HERE (the development machine) before a device run: stage what the GPU machine lacks.
# It has Python 3.12 and a CUDA torch, but no websockets, encodec, tokenizers or voice presets,
# and no network. Everything goes into .whl/ (ignored by git), which the run carries.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl/voices/v2
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
  websockets encodec einops tokenizers huggingface_hub msgpack uvloop
# encodec ships as an sdist only: build its pure-Python wheel here.
ls .whl/encodec-*.whl >/dev/null 2>&1 || pip wheel -q --no-deps -w .whl encodec==0.1.1
cp "$(python -c 'from streaming.voices import bundled_voices_dir; print(bundled_voices_dir())')/v2/en_speaker_6.npz" .whl/voices/v2/
du -sh .whl
