#!/usr/bin/env bash
# GPU calls that re-create the shipped tiny defaults in one chain (issues 25, 26, 27), each stage
# starting from the one before, so the shipped model has every skill:
#
#   zooms   experiment=tiny_zooms from ruyi/assets/ruyi-tiny-pans: zoom_in / zoom_out rows + LoRA (merged)
#   kf      experiment=tiny_keyframes from zooms' checkpoint, the zooms kept in the data: continuation,
#           keyframes anywhere (known-frame masks); the default ruyi-tiny-pans is this one
#   turbo   experiment=tiny_turbo with kf's checkpoint as teacher and start: the few-step student
#   control7b  one finetune=control step of Ruyi-Mini-7B at its real shape, random weights, 512x512x24:
#           with a rank-16 LoRA (and rows only with ROWS_ONLY=1) (issue 27 item 5)
#
#   STAGES="zooms kf" bash benchmarks/defaults_gpu_job.sh       # in the repository root, OUT set there
#   STAGES="turbo control7b" bash benchmarks/defaults_gpu_job.sh # runs/kf/checkpoint present (carried)
#
# Carry .whl (diffusers, hydra-core, omegaconf, antlr4 wheels) and models/photos.npz. Each stage's
# time is set by steps_for_time (ZOOMS_T, KF_T, TURBO_T) and capped by trainer.max_time (ZOOMS_MAX,
# KF_MAX, TURBO_MAX); back in $OUT:
# <stage>.tar (summary.json, embeddings/lora files, checkpoint/ flat enough to come back) and
# <stage>.log (the lines that matter), control7b.jsonl. A CPU dry run: EXTRA="compile=none
# trainer.max_steps=2 steps_for_time=null batch_size=2 data.bank_size=8" WORKERS=0 T_7B=0.
set -uo pipefail
: "${OUT:?OUT names the folder whose files come back}"
if python3 -c "import diffusers, hydra, omegaconf" 2>/dev/null; then export PYTHONPATH=$PWD; else
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1
if [ -f models/photos.npz ]; then export RUYI_PHOTOS=$PWD/models/photos.npz; fi
STAGES=${STAGES:-zooms kf}
CAMERAS='data.cameras=[static,left,right,up,down,zoom_in,zoom_out]'
COMMON="compile=regional trainer.checkpoint_every_n_steps=null trainer.max_steps=100000 num_workers=${WORKERS:-14}"
nvidia-smi -L

pack() {  # $1 = stage: its run folder as one archive, without Lightning's own checkpoints
    tar -cf "$OUT/$1.tar" -C runs --exclude="$1/checkpoints" --exclude="$1/logs" --exclude="$1/latent_cache" "$1"
    ls -la "runs/$1" "runs/$1/checkpoint" | tee -a "$OUT/$1.log"
}

train() {  # $1 = stage, then overrides
    local stage=$1; shift
    echo "== $stage: $*" | tee "$OUT/$stage.log"
    local t0=$SECONDS
    python3 scripts/train.py output_dir=runs/$stage $COMMON "$@" ${EXTRA:-} 2>&1 \
        | grep -vE "Warning|warn|^\s*$|Tip:" | grep -E "steps_for_time|max_steps|loss|Error|error|Traceback|exported|wrote|summary|step" \
        | tail -40 | tee -a "$OUT/$stage.log" | tail -8
    echo "$stage: $((SECONDS - t0)) s wall" | tee -a "$OUT/$stage.log"
    [ -f "runs/$stage/checkpoint/transformer/diffusion_pytorch_model.safetensors" ] && pack "$stage"
}

for stage in $STAGES; do
    case $stage in
    zooms)
        train zooms experiment=tiny_zooms steps_for_time=${ZOOMS_T:-00:00:02:30} trainer.max_time=${ZOOMS_MAX:-00:00:03:30} ;;
    kf)
        train kf experiment=tiny_keyframes model.path=runs/zooms/checkpoint "$CAMERAS" \
            steps_for_time=${KF_T:-00:00:03:00} trainer.max_time=${KF_MAX:-00:00:04:00} ;;
    turbo)
        train turbo experiment=tiny_turbo model.path=runs/kf/checkpoint finetune.teacher=runs/kf/checkpoint "$CAMERAS" \
            steps_for_time=${TURBO_T:-00:00:03:40} trainer.max_time=${TURBO_MAX:-00:00:04:40} ;;
    control7b)
        SEVEN_B="--random-weights model=ruyi_mini_7b dtype=bfloat16 gradient_checkpointing=true data.frames=24
                 data.height=512 data.width=512 data.bank_size=4 num_workers=2 batch_size=1
                 data.cameras=[static,left,zoom_in,zoom_out] data.zoom_per_frame=[0.01,0.02,0.03,0.04]"
        echo "== 7B finetune=control, rank-16 LoRA"
        timeout ${T_7B:-150} python3 benchmarks/train_speed.py $SEVEN_B finetune=control 'finetune.lora={rank:16,alpha:16}' \
            --steps 3 --warmup 1 --jsonl "$OUT/control7b.jsonl" 2>&1 | grep -E "RESULT|Error|error" | cut -c1-600
        [ -n "${ROWS_ONLY:-}" ] && echo "== 7B finetune=control, rows only" && timeout ${T_7B:-150} python3 benchmarks/train_speed.py $SEVEN_B finetune=control \
            --steps 3 --warmup 1 --jsonl "$OUT/control7b.jsonl" 2>&1 | grep -E "RESULT|Error|error" | cut -c1-600 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
    esac
done
