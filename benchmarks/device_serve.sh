#!/usr/bin/env bash
# Serving on the GPU machine (issue "Serving", item 4: served throughput at concurrency 1 and 16 against the model's
# own), from the repository root. Triton's wheel (55 MB) and the client's wheels travel in two carries, one device
# call each, back to back (the machine keeps /tmp while it stays warm, 30 s after a call):
#
#   here:   bash benchmarks/device_serve.sh prep     # .servewhl/c0 (nvidia-pytriton), .servewhl/c1 (numpy<2 for the
#                                                    # server's Python-backend stub, tritonclient[http] and its deps)
#   device: bash benchmarks/device_serve.sh take 0   # carry [".servewhl/c0"]
#   device: bash benchmarks/device_serve.sh take 1   # carry [".servewhl/c1"]
#   device: bash benchmarks/device_serve.sh bench    # carry [".whl"] (pycocotools cp312); writes $OUT/serve_bench_gpu.json
#
# bench: benchmarks/serve_bench.py on the shipped checkpoint with the PyTorch GPU backend (--device cuda) at the
# input size the checkpoint records, over SERVE_IMAGES synthetic 1080x1920 JPEGs. The server is found through
# RCNN_DEPLOY_TRITONSERVER and its stub's numpy<2 through RCNN_DEPLOY_TRITON_STUB_SITE (src/rcnn_deploy/serve/server.py).
set -uo pipefail
source "$(dirname "$0")/device_common.sh"
T=/tmp/triton
export RCNN_DEPLOY_TRITONSERVER=$T/pytriton/tritonserver/bin/tritonserver RCNN_DEPLOY_TRITON_STUB_SITE=$T/stub-site
case "${1:-}" in
  prep)
    rm -rf .servewhl && mkdir -p .servewhl/c0 .servewhl/c1
    download_cp312 .servewhl/c0 "nvidia-pytriton==0.7.0" || exit 1
    mkdir -p .servewhl/c1/stub .servewhl/c1/client
    download_cp312 .servewhl/c1/stub "numpy<2" || exit 1
    download_cp312 .servewhl/c1/client tritonclient geventhttpclient gevent greenlet zope.event zope.interface brotli \
      python-rapidjson || exit 1
    du -sh .servewhl/c0 .servewhl/c1
    ;;
  take)
    if [ "$2" = 0 ]; then
      install_wheels $T .servewhl/c0/*.whl || exit 1
      ls -la "$RCNN_DEPLOY_TRITONSERVER"
    else
      install_wheels $T/stub-site .servewhl/c1/stub/*.whl || exit 1
      install_wheels /tmp/site-serve .servewhl/c1/client/*.whl || exit 1
      PYTHONPATH=/tmp/site-serve python3 -c "import tritonclient.http; print('tritonclient ok')"
    fi
    ;;
  bench)
    bench_env /tmp/site-serve /tmp/serve_out
    W=/tmp/serve_work
    if [ ! -d $W/photos/images ]; then
      python3 -m rcnn_deploy.cli data synth -o $W/photos -n "${SERVE_IMAGES:-64}" --height 1080 --width 1920 \
        --image-format jpg --seed 3 >/dev/null || exit 1
    fi
    python3 benchmarks/serve_bench.py checkpoints/shapes_maskrcnn_r50fpn.pt --backend torch --device cuda \
      --images $W/photos/images --num-images "${SERVE_IMAGES:-64}" --max-batch 8 --concurrency 1,16 \
      --note "shipped checkpoint, PyTorch GPU backend (--device cuda), its recorded input size" \
      -o "$OUT/serve_bench_gpu.json" 2>&1 | tee "$OUT/serve_bench_gpu.log"
    ;;
  *)
    echo "usage: bash benchmarks/device_serve.sh prep | take 0|1 | bench" >&2
    exit 2
    ;;
esac
