#!/usr/bin/env bash
# Retrain the super-resolution models with the ESRGAN recipe (docs/training.md, "Super-resolution: the grid and
# the dials"): first the pixel-loss network of each factor, then the feature-loss network fine-tuned from it with a
# TV term and a small pixel term. Fine-tuning from the pixel network removes the 4-pixel grid of the from-scratch
# l_feat nets and is what the detail dial needs (one architecture, one lineage: network interpolation).
#   bash scripts/train_sr.sh pixel|feat|all SECONDS_PER_STAGE
# Both factors of a stage train at once on one GPU; each stops at its iteration count or on SIGINT at the budget
# (the trainer saves a checkpoint on Ctrl-C), then its best checkpoint is published as the next version to
# $MODEL_STORE (else the user store; MODEL_STORE=model_store/builtin for the shipped models).
# Paths come from the environment: PERCEPT_DATA, PERCEPT_VGG_WEIGHTS, PERCEPT_RUNS.
#
# Measured on 2 CPU cores (2026-12-05): the x4 fine-tune at batch 8, 144², bf16 autocast ran 0.15-1.1 it/s on
# the shared machine, 800 iterations in all; the GPU stage lengths below are the point of this script.
set -u
stage=${1:?pixel, feat or all}
budget=${2:?seconds per stage}
runs=${PERCEPT_RUNS:-runs}
percept=${PERCEPT:-percept}
common=(--amp --workers 4 --checkpoint-every 1000 --preview-every 2000 --val-every 1000)
mkdir -p "$runs"

run_stage() {  # NAME ARGS... per factor, all at once; then publish each
  local pids=() names=()
  for spec in "$@"; do
    local name=${spec%%:*} args=${spec#*:}
    names+=("$name")
    # shellcheck disable=SC2086
    timeout --foreground -s INT "$budget" $percept train sr $args --name "$name" --run-dir "$runs/$name" \
      "${common[@]}" > "$runs/$name.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  for n in "${names[@]}"; do
    if [ -f "$runs/$n/checkpoints/last.pt" ]; then
      $percept models publish "$runs/$n" --name "$n" || echo "publish $n failed"
    else
      echo "no checkpoint for $n"; tail -5 "$runs/$n.log"
    fi
  done
}

if [ "$stage" = pixel ] || [ "$stage" = all ]; then
  # l_pixel without normalization diverges at lr 1e-3 (docs/training.md): lower lr, clip the gradient norm.
  run_stage "sr_x4_pixel:--factor 4 --loss pixel --lr 5e-4 --grad-clip 1.0 --iterations 100000" \
            "sr_x8_pixel:--factor 8 --loss pixel --lr 5e-4 --grad-clip 1.0 --iterations 100000"
fi
if [ "$stage" = feat ] || [ "$stage" = all ]; then
  # ESRGAN fine-tune from the pixel network just published: feature loss (relu2_2) + 1 x pixel MSE + TV 2e-4 +
  # the lattice penalty at weight 1000 (trainer.losses.lattice_loss: without it the 4-px grid came back at every
  # pixel weight tried; docs/training.md). sr_x4 v2 and sr_x8 v2 are 1,000 / ITERS_X8 CPU iterations of this.
  # Check `python scripts/sr_figures.py lattice --new NAME@N [--factor 8]` before shipping.
  ft="--loss feat --pixel-weight 1 --lattice-weight 1000 --tv-weight 2e-4 --lr 2e-4 --grad-clip 1.0 --iterations 50000"
  run_stage "sr_x4:--factor 4 $ft --init-from sr_x4_pixel" "sr_x8:--factor 8 $ft --init-from sr_x8_pixel"
fi
