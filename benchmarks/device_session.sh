#!/usr/bin/env bash
# One GPU session's measurements as a background chain on the device machine, so that the calls which only
# carry files (TensorRT 8.6 chunks, Ray and Triton wheels) overlap with the work instead of waiting for it.
# A machine goes back 30 s after a call: make the calls back to back (`poll` with a sleep keeps it warm) and do
# no local work between them (run 17 lost its first machine, with the data, engines and wheels on it, to a
# 40-second pause between two polls).
#
#   here:   bash benchmarks/device_prep_here.sh                # every carry below, and the tree sent (run it
#                                                            # again right before each start)
#   device: bash benchmarks/device_session.sh start [STEP...]  # carry [".whl", ".devcarry"]; checkpoint in the tree
#   device: mkdir -p /tmp/trt86/in && cp .trt86/cK/part.* /tmp/trt86/in/   # carry [".trt86/cK"], K = 0..N
#           ... && bash .trt86/cN/setup.sh                                 # the last chunk's call
#   device: bash benchmarks/device_e2e.sh take_cv           # carry [".cvcarry"]: OpenCV for the TensorRT process
#   device: bash benchmarks/device_e2e.sh take_nvimg        # carry [".nvimgcarry"]: GPU JPEG decoding there
#   device: bash benchmarks/device_ray.sh take 0|1           # carry [".raywhl/cK"] (optional: the Ray step)
#   device: bash benchmarks/device_serve.sh take 0|1         # carry [".servewhl/cK"] (optional: the serving step)
#   device: bash benchmarks/device_session.sh poll [SECONDS] # waits up to SECONDS for the chain, prints its
#                                                            # progress, returns what it wrote as $OUT/session.tgz
#
# `start` copies the repository (with the checkpoint) to /tmp/sess/repo and runs the chain from there, so the
# calls that carry chunks and wheels (58 MiB each: move the 43 MB checkpoint out of the tree for them) do not
# disturb it. The steps, in this order unless `start`/`resume` names others (each step's log in /tmp/sess/logs,
# results in /tmp/sess/out; a failed step is recorded and the chain goes on). The default order puts the steps that
# need only prep's data (torch_gpudecode, torch_profile) where the chain would otherwise wait for the TensorRT chunks:
#   prep             device_e2e.sh prep: 256 synthetic 1920x1080 JPEGs, the 384^2 validation split (PNG and
#                    JPEG), uint8 fused exports at 1344 (batch 8 and 1); prep_data: the images only
#   torch_parity     e2e_torch_cuda.py --phases parity in the foreground (torch_parity_bg: beside the build)
#   torchvision      e2e_torchvision.py, the baseline
#   torch_stream     e2e_torch_cuda.py --phases stream (fp16 CUDA graphs, batch 8 and 1, streamed, b1 latency)
#   torch_profile    e2e_torch_cuda.py --phases profile (torch.profiler by pipeline stage, fp16, batch 1 and 8)
#   wait_trt         waits for the chunk calls' setup.sh (/tmp/trt86/env.sh)
#   torch_parity_bg  e2e_torch_cuda.py --phases parity, in the background beside the build (mAP only)
#   build            device_e2e.sh build: fp16 engines at batch 8 and 1 (about 6.5 min together on the H200)
#   nvjpeg           device_e2e.sh nvjpeg: nvImageCodec's decoders alone and beside the batch-8 engine
#   probe            device_e2e.sh probe: trt_runner_probe.py (where the batch-8 GPU-decode stream's time goes)
#   paste_check      paste_kernel_check.py: the torch-free CUDA mask paste against the host paste (no TensorRT)
#   trt              device_e2e.sh bench: e2e_trt.py in CPython 3.9 + TensorRT 8.6 (OpenCV after take_cv; the
#                    GPU-decode rows after take_nvimg)
#   user_check       device_e2e.sh user_check: trt_user_check.py, the batch-1 engine over JPEGs with bad files
#                    among them as infer writes it (host paste, kernel paste, GPU decode + kernel paste)
#   serve_trt        device_serve.sh bench_trt: the batch-8 engine served by Triton from CPython 3.9
#   ray, serve       device_ray.sh bench, device_serve.sh bench (each only when its wheels were installed)
#   torch_more       e2e_torch_cuda.py --phases precisions,faster
#   gpu_post         gpu_post_bench.py --device cuda
#   torch_gpupost    e2e_torch_cuda.py --phases gpu_post (masks pasted and RLE-encoded on the GPU, end to end)
#   torch_roi_align  e2e_torch_cuda.py --phases roi_align (the sync-free ROIAligns: per level, stacked, Triton)
#   torch_compile_e2e e2e_torch_cuda.py --phases gpu_post --stream-compile default (the compiled forward end to end)
#   torch_compile_triton the same with --roi-align triton (the Triton multi-level ROIAlign)
#   torch_triton     e2e_torch_cuda.py --phases gpu_decode,gpu_post, compiled, --roi-align triton (else triton_eager)
#   torch_gpudecode  e2e_torch_cuda.py --phases gpu_decode (its first capture crashed its process in run 16; the chain goes on)
#   torch_gpudecode_compiled  the same, --stream-compile default
#   torch_e2e_compiled  e2e_torch_cuda.py --phases gpu_decode,gpu_post --stream-compile default (the defaults)
#   torch_decode_post_compiled  the same with --phases gpu_decode_post (GPU decode + GPU post rows only)
#   torch_stream_compiled  the stream phase compiled: host decode and host post in processes, no GPU decode
#   latency_profile, paste_profile  diagnostics: benchmarks/latency_profile.py, paste_profile.py (logs, $OUT)
#   torch_decode_post_b1_ragged  torch_decode_post_b1 with --post-layout ragged (the GPU post before session 23)
#   nms_fixpoint     nms_fixpoint_bench.py: the sync-free NMS rounds as products and on bits, alone
#   torch_decode_post_b1_matmul, torch_decode_post_compiled_matmul  those steps with the NMS rounds as products
#                    (--nms-fixpoint matmul, the way before session 24), an A/B on one machine
#   torch_decode_post_procs  its batch-8 row with the post's host part and the sinks in 8 worker processes
#   torch_slots_ab   torch_stream_compiled at batch 8 with 4 more pairs of passes: page-locked slots vs the copy
#   torch_gpudecode_sampled, torch_stream_sampled  batch 8 with a thread_sampler.py pass (where the threads sit)
#   issue19, issue17 (start only)  presets: the steps each issue's targets need, in one session (see start);
#                    issue17's trt step includes the GPU mask paste variants (device_e2e.sh E2E_GPU_VARIANTS)
# (TORCH_ROI_ALIGN=MODE in start's environment: every PyTorch step's rows with that sync-free ROIAlign)
set -uo pipefail
S=/tmp/sess
case "${1:-}" in
start)
  if [ -f $S/chain.pid ] && kill -0 "$(cat $S/chain.pid)" 2>/dev/null; then echo "chain already running"; exit 0; fi
  [ -f checkpoints/shapes_maskrcnn_r50fpn.pt ] || { echo "start needs the checkpoint in the tree"; exit 1; }
  # a machine can be lent again with an earlier session's /tmp: its results, logs and steps must not mix with these
  mkdir -p $S/logs $S/out $S/repo && rm -rf "${S:?}"/repo/* "${S:?}"/repo/.[!.]* "${S:?}"/out/* "${S:?}"/logs/* \
    "$S/steps.txt" "$S/DONE"
  tar -ch --exclude=./.venv --exclude=./.trt86 --exclude=./.raywhl --exclude=./.servewhl --exclude=./.cvcarry --exclude=./.nvimgcarry . |
    tar -x -C $S/repo
  cd $S/repo && git rev-parse --short HEAD >$S/out/commit.txt 2>/dev/null
  git -C $S/repo status --short >>$S/out/commit.txt 2>/dev/null
  shift
  # presets: every measurement one issue's targets need, in one session (torchvision, the baseline, first)
  #   issue19  PyTorch: batch-1 latency (GPU decode + post), batch 8 with GPU decode and with host decode (each with
  #            its batch-1 rows), Faster R-CNN and the precisions, GPU-decode parity
  #   issue17  TensorRT: exports, builds, e2e_trt.py (needs the chunk calls, take_cv and take_nvimg meanwhile)
  set -- $(for s in "$@"; do
    case $s in
    issue19) echo prep_data torchvision torch_decode_post_b1 torch_gpudecode_compiled torch_stream_compiled \
      torch_more torch_parity ;;
    issue17) echo paste_check prep torchvision wait_trt build user_check trt ;;
    *) echo "$s" ;;
    esac
  done)
  if [ $# -gt 0 ]; then set -- steps "$@"; else set -- chain; fi  # start STEP...: only these steps
  setsid nohup bash benchmarks/device_session.sh "$@" >$S/logs/chain.log 2>&1 </dev/null &
  echo $! >$S/chain.pid
  echo "chain started (pid $!) from $(cat $S/out/commit.txt | head -1); nproc $(nproc)"
  echo "tree recorded: $(cat .devcarry/tree.txt 2>/dev/null || echo 'none (run device_prep_here.sh before start)')"
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
chain | resume)
  # resume STEP...: stop the running chain (its whole process group) and run just these steps, in the background
  if [ "$1" = resume ]; then
    shift
    [ -f $S/chain.pid ] && kill -- -"$(cat $S/chain.pid)" 2>/dev/null && sleep 1
    pkill -f tritonserver 2>/dev/null
    rm -f $S/DONE
    cp -r .devcarry/. $S/repo/.devcarry/ 2>/dev/null  # what this call carried (py39 wheels added since start)
    cp benchmarks/device_session.sh $S/repo/benchmarks/
    cd $S/repo && setsid nohup bash benchmarks/device_session.sh steps "$@" >>$S/logs/chain.log 2>&1 </dev/null &
    echo $! >$S/chain.pid
    echo "resumed (pid $!): $*"
    exit 0
  fi
  exec bash "$0" steps prep torchvision torch_gpudecode torch_profile wait_trt torch_parity_bg build trt serve_trt ray \
    torch_stream serve torch_more gpu_post torch_gpupost
  ;;
steps)
  shift
  cd $S/repo || exit 1
  export OUT=$S/out WORK=/tmp/e2e PYTHONUNBUFFERED=1
  # the tree the session sent, as the development machine's git named it (device_prep_here.sh writes it): the git
  # here is a copy that does not follow local commits, so the scripts record this instead (RCNN_DEPLOY_TREE)
  [ -f .devcarry/tree.txt ] && RCNN_DEPLOY_TREE="$(cat .devcarry/tree.txt)" && export RCNN_DEPLOY_TREE
  source benchmarks/device_common.sh
  site_wheels
  export PYTHONPATH=$PWD/src:/tmp/site
  E=/tmp/e2e
  CK=checkpoints/shapes_maskrcnn_r50fpn.pt
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
  with_nvimg() {  # with_nvimg COMMAND...: nvImageCodec on the paths once take_nvimg has unpacked it (else the GPU-decode
    # rows use torchvision's decode_jpeg; each row's gpu_decoder says which), as a user who installed
    # nvidia-nvimgcodec-cu13 + nvidia-nvjpeg would run
    if [ -d /tmp/site-nvimg312/nvidia ]; then
      PYTHONPATH=$PYTHONPATH:/tmp/site-nvimg312 LD_LIBRARY_PATH=/tmp/site-nvimg312/nvjpeg13${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
        "$@"
    else
      "$@"
    fi
  }
  torch_e2e() {  # torch_e2e OUT_NAME PHASES [ARGS...] (TORCH_ROI_ALIGN=MODE: --roi-align MODE for every row)
    local name=$1 phases=$2
    shift 2
    [ -n "${TORCH_ROI_ALIGN:-}" ] && set -- "$@" --roi-align "$TORCH_ROI_ALIGN"
    with_nvimg python3 benchmarks/e2e_torch_cuda.py --checkpoint $CK --size 1344 --images $E/data/images \
      --phases "$phases" --nms-rounds 96 --out "$OUT/$name.json" "$@"
  }
  parity=
  for s in "$@"; do
    case $s in
    prep) step prep bash benchmarks/device_e2e.sh prep ;;
    prep_data) step prep bash benchmarks/device_e2e.sh prep data ;;  # the images only (no exports: PyTorch steps)
    torchvision)
      step torchvision python3 benchmarks/e2e_torchvision.py --checkpoint $CK --size 1344 --images $E/data/images \
        --out $OUT/e2e_torchvision.json ;;
    torch_stream) step torch_stream torch_e2e e2e_torch_cuda stream ;;
    wait_trt) for _ in $(seq 120); do [ -f /tmp/trt86/env.sh ] && break; sleep 5; done ;;  # the chunk calls' setup
    torch_parity) step torch_parity torch_e2e e2e_torch_cuda_parity parity --val $E/val ;;
    torch_parity_bg)  # mAP only: the build's GPU load beside it does not matter
      step torch_parity torch_e2e e2e_torch_cuda_parity parity --val $E/val &
      parity=$! ;;
    build)
      # a timing cache from an earlier session (the build's own output, carried back in .devcarry) saves most of
      # the build's tactic timing; this session's cache goes back in $OUT for the next one
      # (else the committed one: run 24's, TensorRT 8.6.0 on the H200; run 23 built without one in 399 s, run 24 with
      # it in 78 s)
      if [ ! -f $E/timing.cache ]; then
        for c in .devcarry/timing.cache benchmarks/results/e2e/trt86_h200_timing.cache; do
          [ -f "$c" ] && cp "$c" $E/timing.cache && break
        done
      fi
      step build bash benchmarks/device_e2e.sh build
      cp $E/build_*.log $S/logs/ 2>/dev/null
      cp $E/timing.cache $OUT/timing.cache 2>/dev/null
      [ -n "$parity" ] && wait "$parity" ;;
    trt) step trt bash benchmarks/device_e2e.sh bench ;;
    user_check) step user_check bash benchmarks/device_e2e.sh user_check ;;
    paste_check)  # the torch-free GPU mask paste alone (no TensorRT needed): RLE equality and time
      step paste_check python3 benchmarks/paste_kernel_check.py --out $OUT/paste_kernel_check.json ;;
    nvjpeg) step nvjpeg bash benchmarks/device_e2e.sh nvjpeg ;;
    probe) step probe bash benchmarks/device_e2e.sh probe ;;
    torch_roi_align) step torch_roi_align torch_e2e e2e_torch_cuda_roi_align roi_align ;;
    torch_compile_e2e) step torch_compile_e2e torch_e2e e2e_torch_cuda_compiled gpu_post --stream-compile default ;;
    torch_compile_triton)  # the same with the Triton multi-level ROIAlign (glue.roi_align_triton)
      step torch_compile_triton torch_e2e e2e_torch_cuda_compiled_triton gpu_post --stream-compile default \
        --roi-align triton ;;
    torch_triton)  # compiled, Triton ROIAlign: GPU decode with host post in processes, then the GPU-post rows; the
      # kernel launched outside the compiled graph (triton_eager) where Inductor launching it failed
      step torch_triton torch_e2e e2e_torch_cuda_triton gpu_decode,gpu_post --stream-compile default \
        --roi-align triton ||
        step torch_triton_eager torch_e2e e2e_torch_cuda_triton_eager gpu_decode,gpu_post --stream-compile default \
          --roi-align triton_eager ;;
    ray) [ -d /tmp/site-ray ] && step ray bash benchmarks/device_ray.sh bench ;;
    serve) [ -d /tmp/triton/pytriton ] && step serve bash benchmarks/device_serve.sh bench ;;
    serve_trt) [ -d /tmp/triton/pytriton ] && step serve_trt bash benchmarks/device_serve.sh bench_trt ;;
    torch_more) step torch_more torch_e2e e2e_torch_cuda_more precisions,faster ;;
    gpu_post) step gpu_post python3 benchmarks/gpu_post_bench.py --device cuda --threads 1 --out $OUT/gpu_post_cuda.json ;;
    torch_profile) step torch_profile torch_e2e e2e_torch_cuda_profile profile ;;
    torch_gpupost) step torch_gpupost torch_e2e e2e_torch_cuda_gpupost gpu_post ;;
    torch_gpudecode) step torch_gpudecode torch_e2e e2e_torch_cuda_gpudecode gpu_decode ;;
    torch_e2e_compiled)  # compiled, the package's defaults (ROIAlign, paste and letterbox kernels): GPU decode with host
      # post in processes, then host and GPU decode with GPU post
      step torch_e2e_compiled torch_e2e e2e_torch_cuda_e2e_compiled gpu_decode,gpu_post --stream-compile default ;;
    torch_decode_post_compiled)  # compiled, the defaults: GPU decode and GPU post only (the fewest rows)
      step torch_decode_post_compiled torch_e2e e2e_torch_cuda_decode_post_compiled gpu_decode_post \
        --stream-compile default ;;
    torch_decode_post_b1)  # the same at batch 1 only (its latency)
      step torch_decode_post_b1 torch_e2e e2e_torch_cuda_decode_post_b1 gpu_decode_post --stream-compile default \
        --batches 1 ;;
    torch_decode_post_b1_ragged)  # the same with the GPU post's layout before session 23 (an A/B on this machine)
      step torch_decode_post_b1_ragged torch_e2e e2e_torch_cuda_decode_post_b1_ragged gpu_decode_post \
        --stream-compile default --batches 1 --post-layout ragged ;;
    torch_decode_post_procs)  # GPU decode + GPU post at batch 8, the post's host part and the sinks in 8 worker
      # processes (--gpu-decode-processes) instead of the stream's threads
      step torch_decode_post_procs torch_e2e e2e_torch_cuda_decode_post_procs gpu_decode_post --stream-compile default \
        --batches 8 --gpu-decode-processes 8 ;;
    nms_fixpoint)  # the sync-free NMS rounds both ways, alone (benchmarks/nms_fixpoint_bench.py)
      step nms_fixpoint python3 benchmarks/nms_fixpoint_bench.py --out $OUT/nms_fixpoint_cuda.json ;;
    torch_decode_post_b1_matmul)  # torch_decode_post_b1 with the NMS rounds as products (before session 24)
      step torch_decode_post_b1_matmul torch_e2e e2e_torch_cuda_decode_post_b1_matmul gpu_decode_post \
        --stream-compile default --batches 1 --nms-fixpoint matmul ;;
    torch_decode_post_compiled_matmul)  # torch_decode_post_compiled with the NMS rounds as products
      step torch_decode_post_compiled_matmul torch_e2e e2e_torch_cuda_decode_post_compiled_matmul gpu_decode_post \
        --stream-compile default --nms-fixpoint matmul ;;
    latency_profile)  # where batch 1's time goes (GPU decode + GPU post, compiled): stages, cProfile, torch.profiler
      step latency_profile with_nvimg python3 benchmarks/latency_profile.py --checkpoint $CK --images $E/data/images \
        --out-dir $OUT/latency_profile ;;
    paste_profile) step paste_profile python3 benchmarks/paste_profile.py ;;  # paste_runs' kernel path, cProfile
    torch_stream_compiled)  # host decode + letterbox and host post in worker processes, compiled (batch 8 and 1)
      step torch_stream_compiled torch_e2e e2e_torch_cuda_stream_compiled stream --stream-compile default ;;
    torch_slots_ab)  # torch_stream_compiled at batch 8 only, with 4 more pairs of passes: page-locked slots vs the copy
      step torch_slots_ab torch_e2e e2e_torch_cuda_slots_ab stream --stream-compile default --batches 8 --slots-ab 4 ;;
    torch_gpudecode_sampled)  # torch_gpudecode_compiled at batch 8 only, plus a pass with thread_sampler.py
      step torch_gpudecode_sampled torch_e2e e2e_torch_cuda_gpudecode_sampled gpu_decode --stream-compile default \
        --batches 8 --sample-threads ;;
    torch_stream_sampled)  # torch_stream_compiled at batch 8 only, plus a pass with thread_sampler.py
      step torch_stream_sampled torch_e2e e2e_torch_cuda_stream_sampled stream --stream-compile default --batches 8 \
        --sample-threads ;;
    torch_gpudecode_compiled)  # the same, compiled (with TORCH_ROI_ALIGN's ROIAlign)
      step torch_gpudecode_compiled torch_e2e e2e_torch_cuda_gpudecode_compiled gpu_decode --stream-compile default ;;
    *) echo "unknown step $s" >>$S/steps.txt ;;
    esac
  done
  touch $S/DONE
  ;;
*)
  echo "usage: bash benchmarks/device_session.sh start | poll [SECONDS] | resume STEP... | chain" >&2
  exit 2
  ;;
esac
