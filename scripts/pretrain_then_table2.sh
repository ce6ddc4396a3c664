#!/usr/bin/env bash
# GPU window, one command: `ircr pretrain` the paper-size HoVer-Net encoder (10 minutes,
# configs/pretrain/gpu_hovernet.yaml), then Table 2 from it
# (configs/protocols/monuseg_table2_pretrained.yaml). Run from the repository root.
#
# Usage: scripts/pretrain_then_table2.sh [--budget-minutes M] [other ircr experiment options]
#   IRCR_SHARED_DATA   folder with MoNuSeg2018/ and CPM15/ (default ../shared/data)
#   MONUSEG_TEST_ROOT  MoNuSeg 2018 test set (Table 2's test images), as in monuseg_table2.yaml
# Pretraining never sees the validation images of split seeds 0-2 (--exclude-split) nor the
# test set. Interrupted? Run it again: pretraining resumes, finished runs are skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA="${IRCR_SHARED_DATA:-../shared/data}"
IRCR=(python -m ircr)
[ -f prepared/monuseg/dataset.json ] ||
  "${IRCR[@]}" data prepare monuseg "$DATA/MoNuSeg2018/train" -o prepared/monuseg --patch 256
if [ ! -f prepared/monuseg_test/dataset.json ]; then
  : "${MONUSEG_TEST_ROOT:?set MONUSEG_TEST_ROOT to the MoNuSeg 2018 test set (Table 2 test images)}"
  "${IRCR[@]}" data prepare monuseg "$MONUSEG_TEST_ROOT" -o prepared/monuseg_test --patch 256
fi
[ -f prepared/cpm15/dataset.json ] ||
  "${IRCR[@]}" data prepare cpm15 "$DATA/CPM15/train" -o prepared/cpm15 --patch 256 \
      --ratio 1 --option fix_known_swaps=true  # split ratio_1_seed0: all of CPM-15 is used
"${IRCR[@]}" data split prepared/monuseg --ratio 1/8 --seed 0 1 2
resume=()
[ -f pretrained/monuseg_hovernet/checkpoints/last.pt ] && resume=(--resume)
"${IRCR[@]}" pretrain -o pretrained/monuseg_hovernet prepared/monuseg prepared/cpm15 \
    --config configs/pretrain/gpu_hovernet.yaml --exclude-split ratio_1-8_seed0 \
    --exclude-split ratio_1-8_seed1 --exclude-split ratio_1-8_seed2 "${resume[@]}"
"${IRCR[@]}" experiment configs/protocols/monuseg_table2_pretrained.yaml \
    --out experiments/monuseg_table2_pretrained "$@"
