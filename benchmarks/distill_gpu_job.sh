#!/usr/bin/env bash
# One GPU call (issue 26): the measurements of benchmarks/RESULTS.md, "Few-step (distilled) model".
#
#   bash benchmarks/distill_gpu_job.sh      # in the repository root on the GPU machine, OUT set there
#
# Needs on PYTHONPATH what the machine lacks (diffusers, hydra-core, omegaconf, antlr4-python3-runtime
# 4.9.* wheels: it has torch, lightning, peft, torchmetrics, scikit-image). Each part has its own time
# limit (T_7B, T_VIDEO, T_TINY, T_EVAL seconds; 0 skips the last two), so one that fails or hangs leaves
# the others' results. Back in $OUT:
#   train_7b.jsonl      one distillation step of the 7B at its real shape (random weights, bf16): LoRA,
#                       gradient checkpointing, 512 x 512 x 24 frames, 16 guided teacher steps a step
#   infer_7b.txt        the 7B's video at 512 x 512 x 24: the teacher's 10 steps with guidance against
#                       the student's 4 steps without (benchmarks/measure.py, random weights)
#   train_tiny.jsonl    the tiny recipe's speed (experiment=tiny_turbo compile=regional), which sizes it
#   eval_gpu/           benchmarks/distill_eval.py with the untrained student (the teacher's weights):
#                       the tiny model's wall time per video on this GPU
set -uo pipefail
: "${OUT:?OUT names the folder whose files come back}"
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, lightning, peft, diffusers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'peft', peft.__version__, 'diffusers', diffusers.__version__)"

SEVEN_B="--random-weights model=ruyi_mini_7b dtype=bfloat16 finetune=distill finetune.student=lora finetune.teacher=same
 gradient_checkpointing=true data.frames=24 data.height=512 data.width=512 data.bank_size=4 num_workers=2 batch_size=1"
echo "== 7B distillation step"
timeout ${T_7B:-170} python3 benchmarks/train_speed.py $SEVEN_B finetune.segments_per_clip=1 --steps 2 --warmup 1 \
    --jsonl "$OUT/train_7b.jsonl" 2>&1 | grep -E "RESULT|Error|error" | cut -c1-600

echo "== 7B video: teacher (10 steps, cfg 7) and student (4 steps, cfg 1)"
SHAPE="frames=24 bench.resolution=512"
timeout ${T_VIDEO:-90} python3 benchmarks/measure.py $SHAPE sampler=ddim cfg=7 bench.warmup_steps=1 bench.measured_steps=2 \
    bench.report_steps=10 2>&1 | grep -E "RESULT|Error|error" | tee -a "$OUT/infer_7b.txt" | cut -c1-400
timeout ${T_VIDEO:-90} python3 benchmarks/measure.py $SHAPE sampler=turbo cfg=1 bench.warmup_steps=2 bench.measured_steps=2 \
    bench.report_steps=4 2>&1 | grep -E "RESULT|Error|error" | tee -a "$OUT/infer_7b.txt" | cut -c1-400

echo "== tiny recipe speed"
[ "${T_TINY:-120}" -gt 0 ] && timeout ${T_TINY:-120} python3 benchmarks/train_speed.py experiment=tiny_turbo compile=regional --steps 20 --warmup 5 \
    --jsonl "$OUT/train_tiny.jsonl" 2>&1 | grep -E "RESULT|Error|error" | cut -c1-600

echo "== tiny eval on the GPU (untrained student)"
[ "${T_EVAL:-80}" -gt 0 ] && timeout ${T_EVAL:-80} python3 benchmarks/distill_eval.py --student ruyi/assets/ruyi-tiny-pans --kinds drawn gradients textures \
    --per-kind 2 --views 1 --seeds 1 --device cuda --out "$OUT/eval_gpu" 2>&1 | grep -vE "Warning|warn" | tail -22
