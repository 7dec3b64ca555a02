#!/usr/bin/env bash
# One GPU call (issue 22): train a camera recipe, then judge it on the selection set (for choosing)
# and on the held-out set (for reporting) with benchmarks/camera_following.py --device cuda.
#
#   bash benchmarks/camera_gpu_job.sh        # in the repository root on the GPU machine, OUT set there
#
# Carry: .whl (diffusers, hydra-core, omegaconf, antlr4-python3-runtime 4.9.*, torchmetrics wheels: the
# machine has torch, lightning, transformers, accelerate, peft, scikit-image) and models/photos.npz
# (`python -m ruyi.training.data.photos models/photos.npz` here): the photographs exactly as they are
# here, used when present (else scikit-image's own, which may differ by a resize rounding).
#
# Settings (environment): RECIPE (tiny_pans_v2); TRAIN_BUDGET (by default max_steps is fixed at step 100
# to what fits 7 minutes, so training, ~1 min of evaluation and the start stay inside one 600 s
# command; the steps taken are in summary.json: put them into the recipe to re-create the run);
# TRAIN_ARGS (more overrides); SHARDS (6 evaluation processes per set, side by side on the GPU);
# DEVICE, COMPILE, EVAL_ARGS (a CPU dry run: DEVICE=cpu COMPILE=none TRAIN_BUDGET=trainer.max_steps=20
# TRAIN_ARGS="batch_size=4 num_workers=1" EVAL_ARGS="--per-kind 1 --views 1 --seeds 1" SHARDS=2).
#
# Back in $OUT (8 files at most, 2 folders deep): train.log, run.tar.gz (checkpoint/ to ship,
# summary.json, logs/metrics.csv), selection/ and heldout/ camera_following.{md,json}, heldout_strip.png.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
: "${OUT:?OUT names the folder whose files come back}"
RECIPE=${RECIPE:-tiny_pans_v2}
TRAIN_BUDGET=${TRAIN_BUDGET:-steps_for_time=00:00:07:00 trainer.max_steps=100000 trainer.max_time=00:00:07:40}
TRAIN_ARGS=${TRAIN_ARGS:-}
SHARDS=${SHARDS:-6}
DEVICE=${DEVICE:-cuda}
COMPILE=${COMPILE:-regional}
EVAL_ARGS=${EVAL_ARGS:-}
export PYTHONUNBUFFERED=1
if [ -f models/photos.npz ]; then export RUYI_PHOTOS=$PWD/models/photos.npz; fi
# the photographs can be read, and the training, selection and held-out ones share none (by pixels too)
python3 -c "from ruyi.training.data.photos import check_photo_sets; check_photo_sets()" || exit 1

pack() {  # the run's few files that matter, as one archive (the rest would exceed what comes back)
    if [ -d "$OUT/run" ]; then
        tar -czf "$OUT/run.tar.gz" -C "$OUT" --exclude=run/checkpoints --exclude=run/init --exclude=run/latent_cache run
        rm -rf "$OUT/run"
    fi
}
trap pack EXIT
began=$(date +%s)

# 1. train (max_time guards the command's limit should the speed measured at step 100 be optimistic)
# shellcheck disable=SC2086
python3 scripts/train.py experiment="$RECIPE" compile="$COMPILE" output_dir="$OUT/run" $TRAIN_BUDGET \
    trainer.checkpoint_every_n_steps=null $TRAIN_ARGS 2>&1 | tee "$OUT/train.log" | grep -E "steps|Error|error" | tail -n 20
[ -f "$OUT/run/checkpoint/model_index.json" ] || { echo "training left no checkpoint"; exit 1; }
echo "trained in $(( $(date +%s) - began )) s"

# 2. judge: SHARDS processes per set side by side (the tiny model leaves the GPU mostly idle)
rm -rf /tmp/eval && mkdir -p /tmp/eval
for set in selection heldout; do
    for ((i = 0; i < SHARDS; i++)); do
        extra=--no-label-loss
        [ "$i" = 0 ] && extra=
        # one thread each: a dozen processes of 16 threads on 16 cores would crawl (seen 10-30x on a CPU)
        # shellcheck disable=SC2086
        OMP_NUM_THREADS=1 python3 benchmarks/camera_following.py --device "$DEVICE" --model-path "$OUT/run/checkpoint" --set "$set" \
            --shard "$i" "$SHARDS" $extra $EVAL_ARGS --out "/tmp/eval/${set}_$i" > "/tmp/eval/${set}_$i.log" 2>&1 &
    done
done
wait
for set in selection heldout; do
    for ((i = 0; i < SHARDS; i++)); do
        [ -f "/tmp/eval/${set}_$i/camera_following.json" ] || { echo "evaluation $set $i failed:"; tail -n 20 "/tmp/eval/${set}_$i.log"; }
    done
    python3 benchmarks/camera_following.py --merge /tmp/eval/"${set}"_*/camera_following.json --out "$OUT/$set"
done
cp /tmp/eval/heldout_0/strip.png "$OUT/heldout_strip.png" 2>/dev/null
echo "done in $(( $(date +%s) - began )) s"
