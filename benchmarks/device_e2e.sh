#!/usr/bin/env bash
# End-to-end benchmark on the GPU machine (issue "End-to-end runtime"), from the repository root, once
# ../shared/tools/trt86 is set up there (/tmp/trt86/env.sh). Phases, each one device call:
#
#   bash benchmarks/device_e2e.sh prep   # wheels, 256 synthetic 1920x1080 JPEGs, uint8 fused exports (1344, b1 and b8)
#   bash benchmarks/device_e2e.sh build  # fp16 engines of both exports, in parallel (float32-input exports if uint8 fails)
#   bash benchmarks/device_e2e.sh bench  # e2e_trt.py (py39 + TensorRT 8.6), one process per engine
#   bash benchmarks/device_e2e.sh torch  # e2e_torch_cuda.py (PyTorch on the GPU, no TensorRT) and the torchvision
#                                        # baseline e2e_torchvision.py (python3 + torch); needs only prep's data
#   bash benchmarks/device_e2e.sh take_cv  # carry [".cvcarry"]: OpenCV for CPython 3.9 into /tmp/py39cv (bench)
#   bash benchmarks/device_e2e.sh take_nvimg  # carry [".nvimgcarry"]: nvImageCodec + nvJPEG for CPython 3.9 into
#                                           # /tmp/py39nvimg: bench then adds the GPU-decode rows (--gpu-decode);
#                                           # and for python3 (PyTorch's GPU decoding) into /tmp/site-nvimg312
#   bash benchmarks/device_e2e.sh nvjpeg # nvjpeg_bench.py: nvImageCodec's backends alone and beside the b8 engine
#   bash benchmarks/device_e2e.sh probe  # trt_runner_probe.py: the b8 GPU-decode stream with less and less around it
#   bash benchmarks/device_e2e.sh user_check  # trt_user_check.py: the b1 engine over JPEGs with bad files among them
#
# Carry .whl (cp312: pycocotools, onnx_graphsurgeon; `device_results_table.sh wheels`) and .devcarry (py39/:
# pycocotools and Pillow for CPython 3.9; `source benchmarks/device_common.sh && py39_wheels` makes both it and
# .cvcarry).
# Results land in $OUT: e2e_trt.json, e2e_torchvision.json, logs.
set -uo pipefail
W=${WORK:-/tmp/e2e}
OUT=${OUT:-$W/out}
N=${E2E_IMAGES:-256}
SIZE=${E2E_SIZE:-1344}
BATCHES=${E2E_BATCHES:-1 8}  # the engines' batch sizes (E2E_BATCHES=8: the batch-8 engine alone, a shorter run)
mkdir -p "$W" "$OUT"
export PYTHONPATH=$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
CKPT=checkpoints/shapes_maskrcnn_r50fpn.pt

source "$(dirname "$0")/device_common.sh"

export_one() {  # $1 = batch, $2 = input dtype
  local d="$W/b$1_$2"
  [ -f "$d/contract.json" ] && return 0
  python3 -m rcnn_deploy.cli export -m torchvision-maskrcnn -w "$CKPT" --height "$SIZE" --width "$SIZE" \
    --batch "$1" --graph fused --nms plugin --input-dtype "$2" -o "$d" >"$W/export_b$1_$2.log" 2>&1
}

build_one() {  # $1 = batch, $2 = input dtype
  local d="$W/b$1_$2" onnx
  onnx=$(ls "$d"/*_fused_*.onnx | head -1)  # the model graph (letterbox.onnx beside it: the GPU decode's)
  cat >"$d/jobs.json" <<JSON
[{"onnx": "$onnx", "engine": "$d/model_fp16.engine", "precision": "fp16", "batch": [$1, $1, $1],
  "timing_cache": "$W/timing.cache"}]
JSON
  source /tmp/trt86/env.sh && py39 benchmarks/trt_tool.py build "$d/jobs.json" >"$W/build_b$1_$2.log" 2>&1
  [ -f "$d/model_fp16.engine" ]
}

letterbox_engines() {  # $1 = PYTHONPATH, then engine paths: the GPU decode's letterbox engine beside each, built in
  # a process of its own (building it in the process that then runs the model died with SIGSEGV in run 24)
  local pp=$1 e d b
  shift
  for e in "$@"; do
    d=$(dirname "$e")
    b=${d##*/b}; b=${b%%_*}
    PYTHONPATH=$pp py39 -c "import sys; from pathlib import Path; from rcnn_deploy.backends.tensorrt.gpu_pre \
import ensure_letterbox_engine as e; print(e(Path(sys.argv[1]), int(sys.argv[2])))" "$d" "$b" 2>&1 | tail -2
  done
}

trt_process_env() {  # the TensorRT process's environment (bench, user_check): TensorRT 8.6 + CPython 3.9, pp (its
  # PYTHONPATH: the package, Pillow, OpenCV), nvImageCodec when take_nvimg ran (nv: its folder, else empty) and NVRTC
  source /tmp/trt86/env.sh
  pp=$PWD/src:$PWD/.devcarry/py39:/tmp/py39cv
  # nvImageCodec for CUDA 13 with nvJPEG 13 (the cp312 carry, which holds the cp39 binding too; its libraries link
  # the CUDA runtime statically), or with E2E_NVIMG=cu12 the CUDA 12 build (the cp39 carry; run 26a: 97.5 % parity)
  nv=/tmp/site-nvimg312 nvlib=/tmp/site-nvimg312/nvjpeg13
  [ "${E2E_NVIMG:-cu13}" = cu12 ] && nv=/tmp/py39nvimg nvlib=/tmp/py39nvimg/nvidia/nvjpeg/lib
  if [ -d $nv/nvidia/nvimgcodec ]; then
    pp=$pp:$nv
    export LD_LIBRARY_PATH=$nvlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  else
    nv=
  fi
  # NVRTC for the torch-free mask paste kernel (gpu_post="kernel"): the machine's torch wheels bring one
  if [ -z "${RCNN_DEPLOY_NVRTC:-}" ]; then
    RCNN_DEPLOY_NVRTC=$(python3 -c 'import glob, sys; f = [x for p in sys.path for x in sorted(glob.glob(p + "/nvidia/cu13/lib/libnvrtc.so.13*") + glob.glob(p + "/nvidia/cuda_nvrtc/lib/libnvrtc.so.1[23]"))]; print(f[0] if f else "")' 2>/dev/null || true)
    export RCNN_DEPLOY_NVRTC
    echo "NVRTC: ${RCNN_DEPLOY_NVRTC:-none found}"
  fi
}

case "${1:-}" in
prep)
  site_wheels
  t0=$(date +%s)
  if [ ! -f "$W/data/annotations.json" ]; then
    python3 -m rcnn_deploy.cli data synth -o "$W/data" -n "$N" --height 1080 --width 1920 --image-format jpg \
      --min-objects 4 --max-objects 12 -j "$(nproc)" >"$W/synth.log" 2>&1 || { tail -5 "$W/synth.log"; exit 1; }
  fi
  if [ ! -f "$W/val/annotations.json" ]; then  # the checkpoint's validation split (recipes/train_shapes.sh)
    python3 -m rcnn_deploy.cli data synth -o "$W/val" -n 500 --height 384 --width 384 --seed 2 -j "$(nproc)" \
      >"$W/synth_val.log" 2>&1 || { tail -5 "$W/synth_val.log"; exit 1; }
  fi
  if [ ! -f "$W/val_jpg/annotations.json" ]; then  # the same split as JPEGs (GPU decode parity)
    python3 -m rcnn_deploy.cli data synth -o "$W/val_jpg" -n 500 --height 384 --width 384 --seed 2 \
      --image-format jpg -j "$(nproc)" >"$W/synth_val_jpg.log" 2>&1 || { tail -5 "$W/synth_val_jpg.log"; exit 1; }
  fi
  echo "images: $(ls "$W/data/images" | wc -l), val: $(ls "$W/val/images" | wc -l) in $(( $(date +%s) - t0 )) s"
  [ "${2:-}" = "data" ] && exit 0
  for b in $BATCHES; do export_one "$b" uint8 & done
  wait
  ls -la "$W"/b*_uint8/ 2>&1 | head -20
  tail -n 3 "$W"/export_*.log
  ;;
build)
  t0=$(date +%s)
  for b in $BATCHES; do
    (build_one "$b" uint8 || { export_one "$b" float32 && build_one "$b" float32; }) &
  done
  wait
  echo "builds: $(( $(date +%s) - t0 )) s"
  ls -la "$W"/b*/*.engine
  grep -h "@@" "$W"/build_*.log | cut -c1-400
  ;;
bench)
  site_wheels
  engines=()
  for b in 8 1; do
    for dt in uint8 float32; do
      e="$W/b${b}_${dt}/model_fp16.engine"
      if [ -f "$e" ]; then engines+=(--engine "$e"); break; fi
    done
  done
  trt_process_env
  gpu=()
  if [ -n "$nv" ]; then  # take_nvimg ran: also decode + letterbox on the GPU
    gpu=(--gpu-decode --parity-dir "$W/val_jpg" --parity-images "${E2E_PARITY_IMAGES:-64}")
    lb=()
    for ((i = 1; i < ${#engines[@]}; i += 2)); do lb+=("${engines[$i]}"); done
    letterbox_engines "$pp" "${lb[@]}"
  fi
  # GPU-decode configurations (nvImageCodec backend:slots; the first gives the gpu_decode rows)
  # (:post: masks pasted by the torch-free CUDA kernel; host:N:post: host decoding with that paste)
  [ ${#gpu[@]} -gt 0 ] && gpu+=(--gpu-decode-variants "${E2E_GPU_VARIANTS:-default:3,default:3:post,host:2:post}")
  # one process per engine (run 13's batch-1 engine segfaulted after the batch-8 engine in the same process)
  for ((i = 1; i < ${#engines[@]}; i += 2)); do
    e=${engines[$i]}
    b=$(basename "$(dirname "$e")")
    PYTHONPATH=$pp py39 benchmarks/e2e_trt.py --engine "$e" --images "$W/data/images" "${gpu[@]}" \
      --processes "${E2E_PROCESSES:-14}" --repeat "${E2E_REPEAT:-4}" --split-rle "${E2E_SPLIT_RLE:-4,8}" --sample-threads \
      --slots-ab "${E2E_SLOTS_AB:-0}" \
      --out "$OUT/e2e_trt_$b.json" 2>&1 | tail -12
    echo "exit status $b: ${PIPESTATUS[0]}"
  done
  ;;
user_check)
  # trt_user_check.py: the batch-1 engine over a folder of good JPEGs with bad files among them, as infer writes
  # it (host paste, kernel paste, GPU decode + kernel paste)
  trt_process_env
  e=$(ls "$W"/b1_*/model_fp16.engine 2>/dev/null | head -1)
  [ -n "$e" ] || { echo "no batch-1 engine under $W"; exit 1; }
  [ -n "$nv" ] && letterbox_engines "$pp" "$e"
  PYTHONPATH=$pp py39 benchmarks/trt_user_check.py --engine "$e" --images "$W/data/images" \
    --out "$OUT/trt_user_check.json" 2>&1 | tail -8
  ;;
nvjpeg)
  source /tmp/trt86/env.sh
  export LD_LIBRARY_PATH=/tmp/py39nvimg/nvidia/nvjpeg/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  e=$(ls "$W"/b8_*/model_fp16.engine 2>/dev/null | head -1)
  PYTHONPATH=$PWD/src:$PWD/.devcarry/py39:/tmp/py39cv:/tmp/py39nvimg py39 benchmarks/nvjpeg_bench.py \
    --images "$W/data/images" --n 128 ${e:+--engine "$e"} --out "$OUT/nvjpeg_bench${NVJPEG_TAG:-}.json" \
    ${NVJPEG_ARGS:-} 2>&1 | tail -12
  ;;
probe)
  source /tmp/trt86/env.sh
  export LD_LIBRARY_PATH=/tmp/py39nvimg/nvidia/nvjpeg/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  e=$(ls "$W"/b8_*/model_fp16.engine 2>/dev/null | head -1)
  e1=$(ls "$W"/b1_*/model_fp16.engine 2>/dev/null | head -1)
  letterbox_engines "$PWD/src:$PWD/.devcarry/py39:/tmp/py39cv:/tmp/py39nvimg" "$e" ${e1:+"$e1"}
  PYTHONPATH=$PWD/src:$PWD/.devcarry/py39:/tmp/py39cv:/tmp/py39nvimg py39 benchmarks/trt_runner_probe.py \
    --engine "$e" --images "$W/data/images" --processes "0,${E2E_PROCESSES:-14}" --out "$OUT/trt_runner_probe.json" \
    ${e1:+--latency-engine "$e1"} ${E2E_PROBE_ARGS:-} 2>&1 | tail -4
  ;;
torch)
  site_wheels
  python3 benchmarks/e2e_torchvision.py --checkpoint "$CKPT" --size "$SIZE" --images "$W/data/images" \
    --out "$OUT/e2e_torchvision.json" 2>&1 | tee "$OUT/e2e_torchvision.log" | tail -5
  python3 benchmarks/e2e_torch_cuda.py --checkpoint "$CKPT" --size "$SIZE" --images "$W/data/images" --val "$W/val" \
    --processes "${E2E_PROCESSES:-14}" --out "$OUT/e2e_torch_cuda.json" 2>&1 | tee "$OUT/e2e_torch_cuda.log" | tail -30
  ;;
take_cv)
  mkdir -p /tmp/py39cv && python3 -m zipfile -e .cvcarry/opencv_python_headless-*.whl /tmp/py39cv/ || exit 1
  mkdir -p /tmp/py39debs && cp .cvcarry/debs/*.deb /tmp/py39debs/ 2>/dev/null  # libpython3.9 (device_serve.sh bench_trt)
  ls /tmp/py39cv
  ;;
take_nvimg)
  ls .nvimgcarry/*.zip >/dev/null || exit 1
  if [ -f .nvimgcarry/nvimgcodec_cp39.zip ]; then  # either zip may be carried alone (a PyTorch-only session)
    mkdir -p /tmp/py39nvimg && python3 -m zipfile -e .nvimgcarry/nvimgcodec_cp39.zip /tmp/py39nvimg/ || exit 1
    ls /tmp/py39nvimg/nvidia
  fi
  if [ -f .nvimgcarry/nvimgcodec_cp312.zip ]; then  # the PyTorch steps' GPU decoding (device_session.sh torch_e2e)
    mkdir -p /tmp/site-nvimg312.part && python3 -m zipfile -e .nvimgcarry/nvimgcodec_cp312.zip /tmp/site-nvimg312.part/ &&
      mv /tmp/site-nvimg312.part /tmp/site-nvimg312 && ls /tmp/site-nvimg312
  fi
  ;;
*)
  echo "usage: $0 prep [data]|build|bench|nvjpeg|probe|torch|take_cv|take_nvimg" >&2
  exit 2
  ;;
esac
