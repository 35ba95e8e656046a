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
#   device: bash benchmarks/device_serve.sh bench_trt  # after device_e2e.sh build/bench and take_cv: the fused
#                                                    # TensorRT 8.6 engine (batch 8) served; $OUT/serve_bench_trt.json
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
  bench_trt)
    # The python flavour on the batch-8 fp16 engine that device_e2e.sh built. TensorRT 8.6 exists only in the
    # trt86 bundle's CPython 3.9, so the server is started from there (python -m rcnn_deploy.serve, through a
    # wrapper script) and its Python-backend stub is the one for 3.9; that stub links libpython3.9.so, which the
    # bundle's minimal interpreter lacks: .cvcarry/debs carries it (device_common.sh libpython39_deb; take_cv).
    bench_env /tmp/site-serve /tmp/serve_out
    W=/tmp/serve_work E=${WORK:-/tmp/e2e}
    engine=$(ls "$E"/b8_*/model_fp16.engine 2>/dev/null | head -1)
    [ -n "$engine" ] || { echo "no batch-8 engine under $E (device_e2e.sh build first)"; exit 1; }
    [ -f /tmp/trt86/env.sh ] || { echo "trt86 is not set up"; exit 1; }
    ls /tmp/py39debs/libpython3.9_*.deb >/dev/null || { echo "no libpython3.9 deb (device_e2e.sh take_cv)"; exit 1; }
    for d in /tmp/py39debs/libpython3.9_*.deb; do dpkg -x "$d" /tmp/trt86/py39 || exit 1; done
    cat >/tmp/trt86/py39serve.sh <<WRAP
#!/usr/bin/env bash
source /tmp/trt86/env.sh && PYTHONPATH=$PWD/src:$PWD/.devcarry/py39:/tmp/py39cv py39 "\$@"
WRAP
    chmod +x /tmp/trt86/py39serve.sh
    if [ ! -d $W/photos/images ]; then
      python3 -m rcnn_deploy.cli data synth -o $W/photos -n "${SERVE_IMAGES:-64}" --height 1080 --width 1920 \
        --image-format jpg --seed 3 >/dev/null || exit 1
    fi
    own=$(ls "$OUT"/e2e_trt_b8_*.json 2>/dev/null | head -1)
    note="shipped checkpoint, fused fp16 TensorRT 8.6 engine (batch 8, 1344), served from CPython 3.9"
    serve_trt() {  # serve_trt NAME INSTANCES CONCURRENCY
      python3 benchmarks/serve_bench.py "$engine" --server-python /tmp/trt86/py39serve.sh ${own:+--engine-own "$own"} \
        --images $W/photos/images --num-images "${SERVE_IMAGES:-64}" --max-batch 8 --instances "$2" --concurrency "$3" \
        --note "$note, $2 model instance(s)" -o "$OUT/$1.json" 2>&1 | tee "$OUT/$1.log"
    }
    serve_trt serve_bench_trt 1 1,16
    # one instance decodes and post-processes on one host thread (run 18: 23.7 img/s at 16); four share the engine
    serve_trt serve_bench_trt_i4 4 1,16,32
    ;;
  *)
    echo "usage: bash benchmarks/device_serve.sh prep | take 0|1 | bench | bench_trt" >&2
    exit 2
    ;;
esac
