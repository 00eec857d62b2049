#!/usr/bin/env bash
# Train the built-in models, all of a group at once on one GPU, each for a fixed wall-clock budget.
#   bash scripts/train_builtin.sh styles|sr SECONDS
# Styles train with the default (balanced) recipe for the paper's 40k iterations; every run also stops on SIGINT at
# the budget (the trainer saves a checkpoint on Ctrl-C). Then each run's best checkpoint (lowest validation
# objective) is published to the model store ($MODEL_STORE, else the built-in store) as the next version.
# Paths come from the environment:
#   STYLES (folder of style images), PERCEPT_DATA, PERCEPT_VGG_WEIGHTS, PERCEPT_RUNS, PERCEPT_PREVIEW_DIR.
set -u
group=${1:?styles or sr}
budget=${2:?seconds}
styles=${STYLES:-../shared/data/styles}
runs=${PERCEPT_RUNS:-runs}
percept=${PERCEPT:-percept}
common=(--amp --workers 2 --checkpoint-every 1000 --preview-every 1000 --val-every 1000)

pids=()
if [ "$group" = styles ]; then
  names=(muse starry_night wave candy mosaic udnie the_scream composition_vii)
  files=(la_muse starry_night wave candy mosaic udnie the_scream composition_vii)
  for i in "${!names[@]}"; do
    timeout --foreground -s INT "$budget" $percept train style --style-image "$styles/${files[$i]}.jpg" --name "${names[$i]}" \
      --width 0.5 --iterations 40000 --run-dir "$runs/${names[$i]}" "${common[@]}" > "$runs/${names[$i]}.log" 2>&1 &
    pids+=($!)
  done
else
  names=(sr_x4 sr_x8 sr_x4_pixel)
  # l_pixel without normalization diverges at lr 1e-3 (docs/training.md): lower lr, clip the gradient norm.
  args=("--factor 4 --loss feat" "--factor 8 --loss feat" "--factor 4 --loss pixel --lr 5e-4 --grad-clip 1.0")
  for i in "${!names[@]}"; do
    # shellcheck disable=SC2086
    timeout --foreground -s INT "$budget" $percept train sr ${args[$i]} --name "${names[$i]}" --run-dir "$runs/${names[$i]}" \
      --iterations 200000 "${common[@]}" > "$runs/${names[$i]}.log" 2>&1 &
    pids+=($!)
  done
fi
for pid in "${pids[@]}"; do wait "$pid"; done
for n in "${names[@]}"; do
  if [ -f "$runs/$n/checkpoints/last.pt" ]; then
    $percept models publish "$runs/$n" --name "$n" || echo "publish $n failed"   # the run's best.pt
  else
    echo "no checkpoint for $n"; tail -5 "$runs/$n.log"
  fi
done
