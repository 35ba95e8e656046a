#!/usr/bin/env bash
# Everything a GPU session's carries need, made here (on the development machine, with a package index) before
# the first device call, so the calls can follow each other within the machine's 30-second idle window
# (benchmarks/device_session.sh lists the calls). Idempotent: what exists is kept. About 1.2 GB in git-ignored
# folders:
#   .whl       cp312 wheels for the device's python3 (pycocotools, onnx_graphsurgeon)
#   .devcarry  py39/: Pillow and pycocotools for the TensorRT 8.6 process (CPython 3.9)
#   .cvcarry   the opencv-python-headless wheel for that process (its own call: device_e2e.sh take_cv)
#   .nvimgcarry nvImageCodec + nvJPEG for that process and for the device's python3 (PyTorch): GPU decoding (its
#               own call: device_e2e.sh take_nvimg)
#   .trt86     TensorRT 8.6 + CPython 3.9 in chunks (../shared/tools/trt86/prepare.sh)
#   .raywhl    Ray for the device's python3, two chunks (device_ray.sh prep)
#   .servewhl  Triton's wheel, numpy<2 for its stub, tritonclient (device_serve.sh prep)
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_common.sh
[ -n "$(ls .whl/*.whl 2>/dev/null)" ] || bash benchmarks/device_results_table.sh wheels
[ -d .devcarry/py39/PIL ] && [ -n "$(ls .cvcarry/*.whl 2>/dev/null)" ] || py39_wheels
[ -f .nvimgcarry/nvimgcodec_cp39.zip ] || nvimgcodec_carry
[ -f .nvimgcarry/nvimgcodec_cp312.zip ] || nvimgcodec312_carry
[ -f .trt86/READY ] || bash ../shared/tools/trt86/prepare.sh .trt86
[ -d .raywhl/c1 ] || bash benchmarks/device_ray.sh prep
[ -d .servewhl/c1 ] || bash benchmarks/device_serve.sh prep
# the tree this session's start call sends (run this script again right before it): the device's git does not
# follow local commits, so the benchmarks record this (RCNN_DEPLOY_TREE, set by device_session.sh)
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src benchmarks || echo ' + uncommitted changes')" \
  >.devcarry/tree.txt
echo "tree: $(cat .devcarry/tree.txt)"
du -sh .whl .devcarry .cvcarry .nvimgcarry .trt86 .raywhl .servewhl
echo "chunks: $(ls -d .trt86/c* | wc -l) (the last holds setup.sh)"
