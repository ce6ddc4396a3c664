#!/usr/bin/env bash
# Issue 21, point 4: does `ircr pretrain` help? (CPU; hours on an idle 2-core machine)
#
#   1. data: MoNuSeg 2018 training tiles (splits ratio_1-8_seed0..2) and CPM-15, prepared
#   2. pretrain each network on MoNuSeg's pixels + CPM-15, leaving out the validation images
#      of all three splits (--exclude-split), and record its CPU time (card.json cpu_seconds)
#   3. per network, one `ircr experiment` protocol on MoNuSeg 1/8, split seeds 0-2 paired with
#      train seeds 10-12, the same iterations for every method: supervised from scratch,
#      supervised from the pretrained encoder, Mean Teacher and IRCR from the pretrained encoder
#   4. a table: val AJI / Dice / PQ mean ± std (experiment report.md) + pretraining time
#
# Networks: "lite" (the shipped default: width 1/4, blocks 2-2-2-2, 128 px patches, 450
# iterations as configs/default_model/lite_monuseg.yaml) and "narrow" (paper depth 3-4-6-3,
# width 1/8, 64 px patches, 1,000 iterations as configs/monuseg/ssl/cpu/cpu_scale.yaml).
#
# Usage: scripts/measure_pretrain.sh [WORK_DIR]        (default experiments/pretrain_measure)
#   NETS="lite narrow"  networks to measure;  SEEDS="0 1 2" split seeds (train seed = 10 + s)
#   PT_ITERATIONS=N     pretraining iterations (default: the config's; the card records them)
#   METHODS="..."       rows of the experiment (default: supervised supervised_pretrained
#                       mean_teacher_pretrained ircr_pretrained)
#   JOBS=N              runs in parallel (ircr experiment --jobs; default 1). Each run then gets
#                       OMP_NUM_THREADS threads (default 1), so JOBS=2 fills 2 cores
#   SMOKE=1             tiny settings (a few iterations, 1 seed, lite only) to check the
#                       pipeline in a few minutes; its numbers mean nothing
#   IRCR_SHARED_DATA    folder with MoNuSeg2018/ and CPM15/ (default ../shared/data)
# Interrupted? Run it again: prepared data is reused, pretraining resumes (--resume) and the
# experiments skip finished runs and resume the others.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mkdir -p "${1:-$REPO/experiments/pretrain_measure}" && cd "${1:-$REPO/experiments/pretrain_measure}" && pwd)"
DATA="${IRCR_SHARED_DATA:-$REPO/../shared/data}"
SMOKE="${SMOKE:-0}"
NETS="${NETS:-lite narrow}"
SEEDS="${SEEDS:-0 1 2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
METHODS="${METHODS:-supervised supervised_pretrained mean_teacher_pretrained ircr_pretrained}"
JOBS="${JOBS:-1}"
IRCR=(python -m ircr)
PT_SET=()
if [ -n "${PT_ITERATIONS:-}" ]; then PT_SET=(--set "train.iterations=$PT_ITERATIONS"); fi
if [ "$SMOKE" = 1 ]; then
  NETS="lite"; SEEDS="0"
  PT_SET=(--set train.iterations=3 --set data.pool=8 --set data.batch_size=4
          --set data.tile=64 --set views.size=64 --set train.log_every=1)
fi
log() { echo "measure_pretrain: $*" >&2; }
for m in $METHODS; do
  case "$m" in
    supervised|supervised_pretrained|mean_teacher_pretrained|ircr_pretrained|self_training_pretrained) ;;
    *) log "unknown method row '$m' in METHODS"; exit 2 ;;
  esac
done

# ---- 1. data -------------------------------------------------------------------------------
prepare() {  # NAME ROOT OUT PATCH [OPTIONS...]
  if [ ! -f "$3/dataset.json" ]; then
    "${IRCR[@]}" data prepare "$1" "$2" -o "$3" --patch "$4" "${@:5}"
  fi
}
split_names=()
for s in $SEEDS; do split_names+=("ratio_1-8_seed$s"); done
exclude=()
for n in "${split_names[@]}"; do exclude+=(--exclude-split "$n"); done

net_patch() { [ "$1" = lite ] && echo 128 || echo 64; }
# (the shared CPM-15 copy has the image04/image05 masks swapped; labels are not used here).
# Its split is ratio_1_seed0, so --exclude-split ratio_1-8_seed* leaves all of CPM-15 in.
prepare cpm15 "$DATA/CPM15/train" "$WORK/data/cpm15" 256 --ratio 1 --seed 0 \
    --option fix_known_swaps=true
for net in $NETS; do
  p=$(net_patch "$net")
  prepare monuseg "$DATA/MoNuSeg2018/train" "$WORK/data/monuseg$p" "$p" --ratio 1/8 --seed 0
  # shellcheck disable=SC2086
  "${IRCR[@]}" data split "$WORK/data/monuseg$p" --ratio 1/8 --seed $SEEDS
done

# ---- 2. pretraining ------------------------------------------------------------------------
for net in $NETS; do
  p=$(net_patch "$net")
  cfg="$REPO/configs/pretrain/cpu_$([ "$net" = lite ] && echo lite || echo paper_narrow).yaml"
  out="$WORK/pretrain_$net"
  resume=()
  if [ -f "$out/checkpoints/last.pt" ]; then resume=(--resume); fi
  log "pretraining $net ($cfg) -> $out"
  "${IRCR[@]}" pretrain -o "$out" "$WORK/data/monuseg$p" "$WORK/data/cpm15" --config "$cfg" \
      "${exclude[@]}" "${PT_SET[@]}" "${resume[@]}" --no-progress
done

# ---- 3. experiments ------------------------------------------------------------------------
method_rows() {  # PRETRAINED_DIR -> the protocol's method list (METHODS)
  local m
  for m in $METHODS; do
    case "$m" in
      supervised) echo "  - name: supervised" ;;
      *_pretrained)
        echo "  - name: $m"
        echo "    method: ${m%_pretrained}"
        echo "    overrides: {model.pretrained: $1}" ;;
    esac
  done
}
write_protocol() {  # NET -> protocol file
  local net=$1 p; p=$(net_patch "$net")
  local pt="$WORK/pretrain_$net" file="$WORK/protocol_$net.yaml"
  local its=450 epochs=3 width=0.25 blocks="[2, 2, 2, 2]" units="[4, 2]" margin=48
  if [ "$net" = narrow ]; then
    its=1000; epochs=4; width=0.125; blocks="[3, 4, 6, 3]"; units="[8, 4]"; margin=32
  fi
  if [ "$SMOKE" = 1 ]; then its=4; epochs=1; fi
  local seeds train_seeds
  seeds=$(echo "$SEEDS" | sed 's/ /, /g')
  train_seeds=$(for s in $SEEDS; do echo -n "$((10 + s)), "; done | sed 's/, $//')
  cat > "$file" <<EOF
# written by scripts/measure_pretrain.sh
description: "MoNuSeg 1/8, $net network: supervised from scratch vs from ircr pretrain; MT and IRCR from it"
config: $REPO/configs/monuseg/ssl/base.yaml
dataset: $WORK/data/monuseg$p
ratios: ["1/8"]
split_seeds: [$seeds]
train_seeds: [$train_seeds]
methods:
$(method_rows "$pt")
evaluate: [student, teacher]
budget_epochs: $epochs
iterations: $its
overrides:
  data.patch_size: $p
  data.context_margin: $margin
  data.workers: 0
  model.width: $width
  model.blocks: $blocks
  model.decoder_units: $units
  train.lr: 1.0e-3
  train.amp: "off"
  train.device: cpu
  train.tensorboard: false
  train.val_every: 0
  eval.window: 256
  eval.overlap: 64
EOF
  echo "$file"
}
for net in $NETS; do
  proto=$(write_protocol "$net")
  log "experiment $net: $proto"
  "${IRCR[@]}" experiment "$proto" --out "$WORK/exp_$net" --jobs "$JOBS" --no-progress
done

# ---- 4. summary ----------------------------------------------------------------------------
{
  echo "# ircr pretrain measurement ($(date -u +%Y-%m-%dT%H:%MZ), SMOKE=$SMOKE)"
  for net in $NETS; do
    echo
    echo "## $net"
    python - "$WORK/pretrain_$net/card.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
print(f"pretraining: {c['steps']} iterations x {c['batch_size']} tiles, "
      f"{c['cpu_seconds'] / 3600:.2f} CPU hours, {c['seconds'] / 3600:.2f} wall hours, "
      f"{len(c['sources'])} source images, {c['tissue_pixels'] / 1e6:.1f} Mpx of tissue")
PY
    echo
    cat "$WORK/exp_$net/report.md"
  done
} > "$WORK/summary.md"
log "summary: $WORK/summary.md"
cat "$WORK/summary.md"
