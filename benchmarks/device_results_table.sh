#!/usr/bin/env bash
# The results-table run on the GPU machine, from the repository root, once ../shared/tools/trt86 is set up
# there (/tmp/trt86/env.sh). The run outlives one device call: start it, then wait on it in later calls.
#
#   bash benchmarks/device_results_table.sh start MINUTES BUILD_MINUTES  # results_table.py in the background
#   bash benchmarks/device_results_table.sh wait SECONDS                 # until it ends or SECONDS pass, then collect
#   bash benchmarks/device_results_table.sh collect                      # what exists now, into $OUT
#   bash benchmarks/device_results_table.sh wheels                       # HERE, first: fill .whl/
#
# Make the wait calls back to back, nothing in between: the machine goes back 30 s after a call ends, and every
# engine and cache of the run with it (session 6 lost nine minutes of builds that way).
#
# Wheels the GPU machine lacks travel in .whl/ (carry it in the start call): pycocotools (the mAP columns) and
# onnx_graphsurgeon (export's graph sanitising); `wheels` downloads them for the GPU machine's CPython 3.12.
# $OUT gets results_table.json (a snapshot while the run goes on), driver.log, logs.tgz (every build's whole
# TensorRT log, build records, accuracy rows) and timing_caches.tgz (carry it as .trtcache/ to seed the next run).
set -uo pipefail
source "$(dirname "$0")/device_common.sh"
W=${WORK:-/tmp/rt}
OUT=${OUT:-$W/out}
mkdir -p "$W" "$OUT"

running() { [ -f "$W/driver.pid" ] && kill -0 "$(cat "$W/driver.pid")" 2>/dev/null; }
# the checkpoint a calibration cache was made for (seeded caches must match it)
ckpt_sha256() { sha256sum checkpoints/shapes_maskrcnn_r50fpn.pt 2>/dev/null | cut -d' ' -f1; }

collect() {
  if running; then
    python3 benchmarks/results_table.py --work "$W" --out "$OUT" --stages collect >/dev/null 2>&1
  elif [ -f "$W/out/results_table.json" ]; then
    cp "$W/out/results_table.json" "$OUT/"
  fi
  cp "$W/driver.log" "$OUT/" 2>/dev/null
  # the builds' timing caches (one per graph) and int8 calibration caches (one per size and graph family): carry
  # the file back in as .trtcache/timing_caches.tgz and `start` seeds the next run with them, so tactics timed
  # once are not timed again and int8 builds reuse the calibration instead of calibrating again. A calibration
  # cache holds for the checkpoint it was calibrated on: the checkpoint's sha256 travels with it.
  ckpt_sha256 >"$W/ckpt.sha256"
  caches=$(cd "$W" && ls */*/*.timing.cache */*_calib.cache 2>/dev/null)
  [ -n "$caches" ] && tar -czf "$OUT/timing_caches.tgz" -C "$W" ckpt.sha256 $caches
  tar -czf "$OUT/logs.tgz" -C "$W" $(cd "$W" && ls -d logs builds rows jobs latency_partial.json 2>/dev/null)
  tail -n 40 "$W/driver.log" 2>/dev/null | cut -c1-400
  running && echo "still running" || echo "finished"
}

case "${1:-}" in
wheels)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl pycocotools==2.0.11 onnx_graphsurgeon==0.6.1 simplejpeg==1.9.0 && ls .whl
  ;;
start)
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    install_wheels /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if running; then echo "already running (pid $(cat "$W/driver.pid"))"; exit 0; fi
  if [ -f .trtcache/timing_caches.tgz ] && [ ! -d "$W/builds" ]; then
    seed=$(mktemp -d) && tar -xzf .trtcache/timing_caches.tgz -C "$seed"
    if [ "$(cat "$seed/ckpt.sha256" 2>/dev/null)" != "$(ckpt_sha256)" ]; then
      rm -f "$seed"/*/*_calib.cache && echo "calibration caches of another checkpoint: not seeded (int8 calibrates again)"
    fi
    (cd "$seed" && find . -name '*.cache' -exec cp --parents {} "$W/" \;) && rm -rf "$seed"
    echo "seeded from .trtcache/timing_caches.tgz: $(cd "$W" && ls */*.cache */*/*.cache 2>/dev/null | tr '\n' ' ')"
  fi
  # TensorRT 8.6 lives in this machine's CPython 3.9 bundle; results_table.py runs its tools with $PY39
  PY39="${PY39:-source /tmp/trt86/env.sh && py39}" setsid nohup python3 -u benchmarks/results_table.py --work "$W" --out "$W/out" \
    --deadline-min "${2:?MINUTES}" --build-deadline-min "${3:?BUILD_MINUTES}" "${@:4}" \
    >"$W/driver.log" 2>&1 </dev/null &
  echo $! >"$W/driver.pid"
  echo "started pid $(cat "$W/driver.pid")"
  ;;
wait)
  end=$((SECONDS + ${2:?SECONDS}))
  while running && [ "$SECONDS" -lt "$end" ]; do sleep 5; done
  collect
  ;;
collect) collect ;;
*) sed -n 2,12p "$0"; exit 2 ;;
esac
