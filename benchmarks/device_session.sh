#!/usr/bin/env bash
# One GPU session's measurements as a background chain on the device machine, so that the calls which only
# carry files (TensorRT 8.6 chunks, Ray and Triton wheels) overlap with the work instead of waiting for it.
# A machine goes back 30 s after a call: make the calls back to back (`poll` with a sleep keeps it warm).
#
#   device: bash benchmarks/device_session.sh start        # carry [".whl", ".devcarry"]; checkpoint in the tree
#   device: mkdir -p /tmp/trt86/in && cp .trt86/cK/part.* /tmp/trt86/in/   # carry [".trt86/cK"], K = 0..N
#           ... && bash .trt86/cN/setup.sh                                 # the last chunk's call
#   device: bash benchmarks/device_ray.sh take 0|1           # carry [".raywhl/cK"] (optional: the Ray step)
#   device: bash benchmarks/device_serve.sh take 0|1         # carry [".servewhl/cK"] (optional: the serving step)
#   device: bash benchmarks/device_session.sh poll [SECONDS] # waits up to SECONDS for the chain, prints its
#                                                            # progress, returns what it wrote as $OUT/session.tgz
#
# `start` copies the repository (with the checkpoint) to /tmp/sess/repo and runs the chain from there, so the
# calls that carry chunks without the checkpoint do not disturb it. The chain, one step after another (each
# step's log in /tmp/sess/logs, results in /tmp/sess/out; a failed step is recorded and the chain goes on):
#   prep        device_e2e.sh prep: 256 synthetic 1920x1080 JPEGs, the 384^2 validation split, uint8 fused exports
#   torch       e2e_torchvision.py (the baseline) and e2e_torch_cuda.py --phases stream (fp16, batch 8 and 1)
#   build       device_e2e.sh build (fp16 engines at batch 8 and 1, once TensorRT 8.6 is set up), with
#               e2e_torch_cuda.py --phases parity beside it (mAP only: the build's GPU load does not matter)
#   trt         device_e2e.sh bench (e2e_trt.py in CPython 3.9 + TensorRT 8.6)
#   ray, serve  device_ray.sh bench, device_serve.sh bench (each only when its wheels were installed)
#   more        e2e_torch_cuda.py --phases precisions,faster; gpu_post_bench.py --device cuda
#   gpudecode   e2e_torch_cuda.py --phases gpu_decode (last: its first capture crashed the process in run 16)
set -uo pipefail
S=/tmp/sess
case "${1:-}" in
start)
  if [ -f $S/chain.pid ] && kill -0 "$(cat $S/chain.pid)" 2>/dev/null; then echo "chain already running"; exit 0; fi
  [ -f checkpoints/shapes_maskrcnn_r50fpn.pt ] || { echo "start needs the checkpoint in the tree"; exit 1; }
  mkdir -p $S/logs $S/out && rm -rf $S/repo && cp -aL . $S/repo 2>/dev/null
  rm -rf $S/repo/.trt86 $S/repo/.raywhl $S/repo/.servewhl
  cd $S/repo && git rev-parse --short HEAD >$S/out/commit.txt 2>/dev/null
  git -C $S/repo status --short >>$S/out/commit.txt 2>/dev/null
  setsid nohup bash benchmarks/device_session.sh chain >$S/logs/chain.log 2>&1 </dev/null &
  echo $! >$S/chain.pid
  echo "chain started (pid $!) from $(cat $S/out/commit.txt | head -1); nproc $(nproc)"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
  ;;
poll)
  end=$(( $(date +%s) + ${2:-0} ))
  while [ "$(date +%s)" -lt "$end" ] && ! [ -f $S/DONE ]; do sleep 5; done
  echo "--- steps"; cat $S/steps.txt 2>/dev/null
  echo "--- chain.log (tail)"; tail -n 15 $S/logs/chain.log 2>/dev/null
  [ -f /tmp/trt86/env.sh ] && echo "trt86: ready" || echo "trt86: not set up"
  ls /tmp/site-ray >/dev/null 2>&1 && echo "ray wheels: installed"
  ls /tmp/triton/pytriton >/dev/null 2>&1 && echo "triton: installed"
  [ -f $S/DONE ] && echo "chain: DONE"
  if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/session.tgz" -C $S out logs steps.txt 2>/dev/null
    ls -la "$OUT"
  fi
  ;;
chain)
  cd $S/repo || exit 1
  export OUT=$S/out WORK=/tmp/e2e PYTHONUNBUFFERED=1
  source benchmarks/device_common.sh
  site_wheels
  export PYTHONPATH=$PWD/src:/tmp/site
  E=/tmp/e2e
  step() {  # step NAME COMMAND...: run, log, record the exit status and the seconds
    local name=$1 t0 rc
    shift
    t0=$(date +%s)
    echo "$(date +%T) $name: started" >>$S/steps.txt
    "$@" >$S/logs/"$name".log 2>&1
    rc=$?
    echo "$(date +%T) $name: exit $rc in $(( $(date +%s) - t0 )) s" >>$S/steps.txt
    return $rc
  }
  step prep bash benchmarks/device_e2e.sh prep
  step torchvision python3 benchmarks/e2e_torchvision.py --checkpoint checkpoints/shapes_maskrcnn_r50fpn.pt \
    --size 1344 --images $E/data/images --out $OUT/e2e_torchvision.json
  step torch_stream python3 benchmarks/e2e_torch_cuda.py --checkpoint checkpoints/shapes_maskrcnn_r50fpn.pt \
    --size 1344 --images $E/data/images --phases stream --nms-rounds 96 --out $OUT/e2e_torch_cuda.json
  for _ in $(seq 120); do [ -f /tmp/trt86/env.sh ] && break; sleep 5; done  # the chunk calls' setup.sh
  step torch_parity python3 benchmarks/e2e_torch_cuda.py --checkpoint checkpoints/shapes_maskrcnn_r50fpn.pt \
    --size 1344 --images $E/data/images --val $E/val --phases parity --nms-rounds 96 \
    --out $OUT/e2e_torch_cuda_parity.json &
  parity=$!
  step build bash benchmarks/device_e2e.sh build
  cp $E/build_*.log $S/logs/ 2>/dev/null
  wait $parity
  step trt bash benchmarks/device_e2e.sh bench
  if [ -d /tmp/site-ray ]; then step ray bash benchmarks/device_ray.sh bench; fi
  if [ -d /tmp/triton/pytriton ]; then step serve bash benchmarks/device_serve.sh bench; fi
  step torch_more python3 benchmarks/e2e_torch_cuda.py --checkpoint checkpoints/shapes_maskrcnn_r50fpn.pt \
    --size 1344 --images $E/data/images --phases precisions,faster --nms-rounds 96 \
    --out $OUT/e2e_torch_cuda_more.json
  step gpu_post python3 benchmarks/gpu_post_bench.py --device cuda --threads 1 --out $OUT/gpu_post_cuda.json
  step torch_gpudecode python3 benchmarks/e2e_torch_cuda.py --checkpoint checkpoints/shapes_maskrcnn_r50fpn.pt \
    --size 1344 --images $E/data/images --phases gpu_decode --nms-rounds 96 \
    --out $OUT/e2e_torch_cuda_gpudecode.json
  touch $S/DONE
  ;;
*)
  echo "usage: bash benchmarks/device_session.sh start | poll [SECONDS] | chain" >&2
  exit 2
  ;;
esac
