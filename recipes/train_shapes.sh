#!/usr/bin/env bash
# The recipe behind checkpoints/shapes_maskrcnn_r50fpn.pt: Mask R-CNN R50-FPN trained from scratch on the
# synthetic shapes set, on one H100/H200, inside 15 minutes end to end (data + training + validation).
#
#   bash recipes/train_shapes.sh WORK_DIR [OUT_CKPT]
#
# Needs rcnn-deploy (or PYTHONPATH=src), torch with CUDA, pycocotools. Every number it prints is measured.
set -euo pipefail
WORK=${1:?usage: train_shapes.sh WORK_DIR [OUT_CKPT]}
CKPT=${2:-$WORK/shapes_maskrcnn_r50fpn.pt}
RD=${RCNN_DEPLOY:-"python3 -m rcnn_deploy.cli"}
J=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
SIZE=384
start=$(date +%s)
$RD data synth -o "$WORK/train" -n 8000 --height $SIZE --width $SIZE --seed 1 -j "$J"
$RD data synth -o "$WORK/val" -n 500 --height $SIZE --width $SIZE --seed 2 -j "$J"
echo "data: $(( $(date +%s) - start )) s"
$RD train --images "$WORK/train/images" --annotations "$WORK/train/annotations.json" \
  --val-annotations "$WORK/val/annotations.json" --val-max-images 200 \
  --model torchvision-maskrcnn --height $SIZE --width $SIZE \
  --batch 16 --optimizer sgd --lr 0.04 --weight-decay 1e-4 --warmup-iters 300 --vflip \
  --epochs 20 --time-budget "${BUDGET_MIN:-7.5}" --workers "$(( J < 12 ? J : 12 ))" --compress int8 -o "$CKPT"
echo "recipe wall time: $(( $(date +%s) - start )) s"
