#!/usr/bin/env bash
# Ray on the GPU machine (issue "Beyond one machine", item 4: one GPU, the same command as a local run), from the
# repository root. The Ray wheel (79 MB) is larger than what one device call carries (64 MiB), so it travels in two
# chunks, one call each, back to back (the machine keeps /tmp while it stays warm, 30 s after a call):
#
#   here:   bash benchmarks/device_ray.sh prep          # .raywhl/c0 (ray, part 1), .raywhl/c1 (ray, part 2 + jsonschema deps)
#   device: bash benchmarks/device_ray.sh take 0        # carry [".raywhl/c0"]
#   device: bash benchmarks/device_ray.sh take 1        # carry [".raywhl/c1"]; reassembles and installs into /tmp/site-ray
#   device: bash benchmarks/device_ray.sh bench         # carry [".whl"] (pycocotools cp312); writes $OUT/ray_bench_gpu1.json
#
# bench: benchmarks/ray_bench.py with the shipped checkpoint on the PyTorch GPU backend at RAY_SIZE (default 800),
# RAY_IMAGES synthetic images (default 256): a local `rcnn-deploy infer --device cuda` against
# `rcnn-deploy infer --ray --workers 1 --gpus-per-worker 1` (the actor takes cuda because Ray gave it the GPU).
set -uo pipefail
source "$(dirname "$0")/device_common.sh"
RAY_VERSION=${RAY_VERSION:-2.60.0}
case "${1:-}" in
  prep)
    rm -rf .raywhl && mkdir -p .raywhl/dl .raywhl/c0 .raywhl/c1
    # ray itself and what its requirements add to the device image's packages (KINDS.md lists those)
    download_cp312 .raywhl/dl "ray==$RAY_VERSION" jsonschema jsonschema-specifications referencing rpds-py || exit 1
    ray=$(ls .raywhl/dl/ray-*.whl)
    split -b 50m -d "$ray" ".raywhl/part."
    mv .raywhl/part.00 .raywhl/c0/ && mv .raywhl/part.* .raywhl/c1/
    basename "$ray" >.raywhl/c1/RAY_WHEEL
    sha256sum "$ray" | cut -d' ' -f1 >.raywhl/c1/RAY_SHA256
    mv $(ls .raywhl/dl/*.whl | grep -v '/ray-') .raywhl/c1/
    rm -rf .raywhl/dl
    du -sh .raywhl/c0 .raywhl/c1
    ;;
  take)
    mkdir -p /tmp/raywhl && cp -r ".raywhl/c$2/." /tmp/raywhl/ || exit 1
    if [ -f /tmp/raywhl/RAY_WHEEL ]; then
      wheel=/tmp/raywhl/$(cat /tmp/raywhl/RAY_WHEEL)
      cat /tmp/raywhl/part.* >"$wheel"
      [ "$(sha256sum "$wheel" | cut -d' ' -f1)" = "$(cat /tmp/raywhl/RAY_SHA256)" ] || { echo "ray wheel damaged"; exit 1; }
      install_wheels /tmp/site-ray /tmp/raywhl/*.whl || exit 1
      PYTHONPATH=/tmp/site-ray python3 -c "import ray, ray.data; print('ray', ray.__version__)"
    fi
    ;;
  bench)
    bench_env /tmp/site-ray /tmp/ray_out
    python3 benchmarks/ray_bench.py --model checkpoints/shapes_maskrcnn_r50fpn.pt --backend torch --device cuda \
      --size "${RAY_SIZE:-800}" --images "${RAY_IMAGES:-256}" --batch "${RAY_BATCH:-4}" --configs 1x1 \
      -o "$OUT/ray_bench_gpu1.json" 2>&1 | tee "$OUT/ray_bench_gpu1.log"
    ;;
  *)
    echo "usage: bash benchmarks/device_ray.sh prep | take 0|1 | bench" >&2
    exit 2
    ;;
esac
