#!/usr/bin/env bash
# Reproduce the packaged default model src/ircr/resources/models/default exactly:
# data prepare -> ircr train (supervised, lite HoVer-Net) -> select the best validation epoch
# -> ircr tune-postproc on the 3 validation images -> evaluate (validation; CPM-15 when it is
# beside MoNuSeg, an independent check never used for selection or tuning) -> package (fp16
# weights + card).
# Each step only reads the previous one's output, so a step can be rerun on its own.
#
# Usage: scripts/train_default_model.sh [--paper-size] [MONUSEG_TRAIN_ROOT] [WORK_DIR]
#   --paper-size        train the paper-size HoVer-Net the same way instead
#                       (configs/default_model/paper_monuseg.yaml) for the comparison in
#                       docs/results.md; steps 1-4 only, nothing is packaged
#   MONUSEG_TRAIN_ROOT  default ../shared/data/MoNuSeg2018/train (next to the repository)
#   WORK_DIR            default /tmp/ircr_default_model (--paper-size: /tmp/ircr_paper_size_model)
# Interrupted? Run it again: training resumes from WORK_DIR/run/checkpoints/last.pt.
# Threads: OMP_NUM_THREADS (default 2, for a machine the training has to itself; on a busy
# 2-core machine set 1: two OpenMP threads spin-wait for each other and run ~3x slower).
# On the idle 2-core machine training takes about 2 hours (docs/models.md).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PAPER=0
if [ "${1:-}" = "--paper-size" ]; then PAPER=1; shift; fi
DATA="${1:-$REPO/../shared/data/MoNuSeg2018/train}"
DEST="$REPO/src/ircr/resources/models/default"
if [ "$PAPER" = 1 ]; then
  WORK="${2:-/tmp/ircr_paper_size_model}"
  CONFIG="$REPO/configs/default_model/paper_monuseg.yaml"
else
  WORK="${2:-/tmp/ircr_default_model}"
  CONFIG="$REPO/configs/default_model/lite_monuseg.yaml"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
SPLIT=ratio_1_seed0

mkdir -p "$WORK"
# 1. 30 labelled images -> 128 px patches; 3 images (10 %) held out by image for validation
if [ ! -f "$WORK/prepared/dataset.json" ]; then
  ircr data prepare monuseg "$DATA" -o "$WORK/prepared" --patch 128 --ratio 1 --seed 0
fi
# 2. train (resumes when a checkpoint exists)
RESUME=()
[ -f "$WORK/run/checkpoints/last.pt" ] && RESUME=(--resume)
ircr train "$CONFIG" --out "$WORK/run" --set data.dataset="$WORK/prepared" --no-progress \
  "${RESUME[@]}"
# 3. model selection: the epoch with the best validation AJI (its validation metrics, default
#    WBIS, are those of the training run: same images, same 256/64 sliding window)
rm -rf "$WORK/selected" "$WORK/eval_tuned"
python "$REPO/scripts/package_default_model.py" select "$WORK/run" "$WORK/selected"
# 4. WBIS thresholds tuned on the validation images (written into the selected folder)
ircr tune-postproc "$WORK/selected" "$WORK/prepared" --split "$SPLIT" --device cpu
ircr evaluate "$WORK/selected" "$WORK/prepared" --split "$SPLIT" --out "$WORK/eval_tuned" \
  --device cpu --no-progress
# 4b. CPM-15 (15 tiles of another cohort): scored, never used for selection or tuning
CPM="${CPM15_ROOT:-$(dirname "$(dirname "$DATA")")/CPM15/train}"
EXTRA=()
if [ -d "$CPM" ]; then
  [ -f "$WORK/cpm15/dataset.json" ] || ircr data prepare cpm15 "$CPM" -o "$WORK/cpm15" --patch 256 \
    --option fix_known_swaps=true
  rm -rf "$WORK/eval_cpm15"
  ircr evaluate "$WORK/selected" "$WORK/cpm15" --split all --out "$WORK/eval_cpm15" \
    --device cpu --no-progress
  EXTRA=(--cpm15 "$WORK/eval_cpm15")
fi
if [ "$PAPER" = 1 ]; then
  echo "paper-size network: selected model $WORK/selected, evaluation $WORK/eval_tuned"
  exit 0
fi
# 5. the shipped folder: fp16 weights, tuned postproc, metrics, model card
python "$REPO/scripts/package_default_model.py" package "$WORK/selected" "$WORK/eval_tuned" \
  "$DEST" "${EXTRA[@]}"
ircr models list
