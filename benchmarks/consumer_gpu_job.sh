#!/usr/bin/env bash
# GPU calls for issue 28 (a consumer PC; the defaults the fastest), the 7B at its real shape. Stages,
# run in the order STAGES lists them (the default order is by value):
#
#   write        a random checkpoint in the real layout on local disk, once (benchmarks/random_checkpoint.py,
#                the random numbers made on the GPU): what the rows load
#   disk768      memory rows through the real loader (benchmarks/memory_rows.py --checkpoint), 1 warm-up +
#   none768      1 timed step each, one fresh process a row: 768²x120 group_lean_disk, none (the ratio's
#   lean768      base; no decode: only its step time is used), group_lean, none_lean (the 24 GB row);
#   nonelean768  512²x120 group_lean_disk
#   disk512
#   speed        the defaults' speed: benchmarks/measure.py as `scripts/infer.py model=ruyi_mini_7b` runs with
#                no speed flags (compile=auto, attention=auto; benchmark.yaml alone pins compile=none),
#                768²x120, random weights; the result names the attention kernel order and its padding
#   cache        the compile cache: 512²x24 compile=regional in two fresh processes, one after the other, on
#                an empty cache folder of its own; first step minus second step = each process's compile
#   best         (not in the default list) the best measured flags, compile=regional attention=fa3
#                attention.pad_head_dim=96, 768²x120, for the same machine's comparison with `speed`
#   video        (its own call, ~330 s) 25 steps of 768²x120 with the defaults, encode / denoise / decode;
#                loads the checkpoint when `write` made one in this call, else random weights
#
#   bash benchmarks/consumer_gpu_job.sh                  # write disk768 none768 speed cache lean768 nonelean768 disk512
#   STAGES=video bash benchmarks/consumer_gpu_job.sh     # or STAGES="write video" (~370 s)
#
# Carry .whl (diffusers, hydra-core, omegaconf, antlr4, importlib_metadata wheels; fa3-fwd for FlashAttention-3;
# ~33 MB: the device takes 64 MiB with the ~27 MB tracked tree, so leave imageio-ffmpeg and torchao out). Every part
# runs under its own `timeout`: min(its cap, what is left of BUDGET seconds since the start), skipped when
# less than MIN_PART is left, so one failing part leaves the others' results. Back in $OUT (flat):
#   parts.tsv          stage, exit status (124: timed out), seconds, limit
#   memory_rows.jsonl  every row's measure.py result; memory_rows.md the table (GPU peak, host peak RSS,
#                      of it by the end of loading, anonymous peak, load s, s/step, x none); rules.py.txt
#   speed.jsonl, best.jsonl, cache.jsonl, video.jsonl   measure.py results; cache.txt the cache's folder and
#                      size and each process's compile time; <stage>.log the lines that matter
# A CPU dry run (tiny model, tiny sizes):
#   OUT=/tmp/consumer MODEL=ruyi_tiny_pans SIZE=64 SMALL=32 FRAMES=8 CACHE_SIZE=32 CACHE_FRAMES=8 \
#       VIDEO_STEPS=3 EXTRA=device=cpu bash benchmarks/consumer_gpu_job.sh
set -uo pipefail
: "${OUT:?OUT names the folder whose files come back}"
if python3 -c "import diffusers, hydra, omegaconf" 2>/dev/null; then export PYTHONPATH=$PWD; else
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1
STAGES=${STAGES:-write disk768 none768 speed cache lean768 nonelean768 disk512}
BUDGET=${BUDGET:-550}       # seconds for the whole call, this script's start included
MIN_PART=${MIN_PART:-30}
MODEL=${MODEL:-ruyi_mini_7b}
SIZE=${SIZE:-768} SMALL=${SMALL:-512} FRAMES=${FRAMES:-120}
CACHE_SIZE=${CACHE_SIZE:-512} CACHE_FRAMES=${CACHE_FRAMES:-24} VIDEO_STEPS=${VIDEO_STEPS:-25}
EXTRA=${EXTRA:-}            # overrides for every job (the dry run: device=cpu)
WORK=${WORK:-/tmp/ruyi-consumer}   # local disk: the checkpoint (~15.6 GB for the 7B), group files, the cache test
CKPT=$WORK/checkpoint-$MODEL
mkdir -p "$OUT" "$WORK/offload"
nvidia-smi -L 2>/dev/null || echo "no GPU (dry run)"
python3 -c "import torch, diffusers, importlib.util as u; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
 'fa3', u.find_spec('fa3_fwd_interface') is not None)" | tee "$OUT/versions.txt"
printf 'stage\trc\tseconds\tlimit\n' > "$OUT/parts.tsv"

part() {  # $1 = stage, $2 = cap in seconds, then the command; output to $OUT/<stage>.log
    local stage=$1 cap=$2; shift 2
    local left=$((BUDGET - SECONDS)) t0=$SECONDS rc
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt "$MIN_PART" ]; then
        printf '%s\tskipped\t0\t%s\n' "$stage" "$limit" | tee -a "$OUT/parts.tsv"
        return 0
    fi
    local from
    from=$(cat "$OUT/$stage.log" 2>/dev/null | wc -l)
    echo "== $stage (limit $limit s): $*" | tee -a "$OUT/$stage.log"
    timeout -k 10 "$limit" "$@" >> "$OUT/$stage.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$stage" "$rc" "$((SECONDS - t0))" "$limit" | tee -a "$OUT/parts.tsv"
    rm -rf "$WORK/offload" && mkdir -p "$WORK/offload"  # group files a killed row left behind (ours)
    tail -n +$((from + 2)) "$OUT/$stage.log" | grep -E "^\| [a-z_]+ +\| [0-9]|RESULT|random .* checkpoint|Error|error" \
        | cut -c1-300 | tail -6
}

row() {  # $1 = stage, $2 = cap, $3 = rule, $4 = size, then overrides for that row
    local stage=$1 cap=$2 rule=$3 size=$4; shift 4
    local left=$((BUDGET - SECONDS))
    local limit=$((cap < left ? cap : left))
    part "$stage" "$cap" python3 benchmarks/memory_rows.py --model "$MODEL" --checkpoint "$CKPT" --rules "$rule" \
        --sizes "$size" --frames "$FRAMES" --steps 1 --timeout $((limit > 15 ? limit - 5 : limit)) \
        --offload-dir "$WORK/offload" --out "$OUT" $EXTRA "$@"
}

measure() {  # $1 = stage, $2 = cap, then overrides; the RESULT line to $OUT/<stage>.jsonl
    local stage=$1 cap=$2; shift 2
    local before
    before=$(grep -c "^RESULT " "$OUT/$stage.log" 2>/dev/null)
    part "$stage" "$cap" python3 benchmarks/measure.py model="$MODEL" $EXTRA "$@"
    if [ "$(grep -c "^RESULT " "$OUT/$stage.log" 2>/dev/null)" -gt "${before:-0}" ]; then
        grep -h "^RESULT " "$OUT/$stage.log" | tail -n 1 | cut -c8- >> "$OUT/$stage.jsonl"
    else
        echo "{\"status\": \"no result\", \"stage\": \"$stage\"}" >> "$OUT/$stage.jsonl"
    fi
}

for stage in $STAGES; do
    case $stage in
    write)
        part write 150 python3 benchmarks/random_checkpoint.py "$CKPT" --preset "$MODEL" ;;
    disk768)
        row disk768 140 group_lean_disk "$SIZE" ;;
    none768)
        row none768 95 none "$SIZE" bench.decode=false ;;
    lean768)
        row lean768 115 group_lean "$SIZE" ;;
    nonelean768)
        row nonelean768 105 none_lean "$SIZE" ;;
    disk512)
        row disk512 90 group_lean_disk "$SMALL" ;;
    speed)
        python3 -m ruyi cache >> "$OUT/speed.log" 2>&1  # empty on a fresh machine: the warm-up is a cold compile
        measure speed 120 frames="$FRAMES" bench.resolution="$SIZE" compile=auto \
            bench.warmup_steps=1 bench.measured_steps=1 bench.decode=false ;;
    best)
        measure best 120 frames="$FRAMES" bench.resolution="$SIZE" compile=regional attention=fa3 attention.pad_head_dim=96 \
            bench.warmup_steps=1 bench.measured_steps=1 bench.decode=false ;;
    cache)
        export RUYI_CACHE_DIR=$WORK/compile-cache  # a folder of its own: the first process starts empty
        rm -rf "$RUYI_CACHE_DIR"
        for run in first second; do
            measure cache 70 frames="$CACHE_FRAMES" bench.resolution="$CACHE_SIZE" compile=regional \
                bench.warmup_steps=1 bench.measured_steps=1 bench.decode=false
        done
        {
            python3 -m ruyi cache
            python3 - "$OUT/cache.jsonl" <<'EOF'
import json, sys
for name, line in zip(("first", "second"), open(sys.argv[1])):
    r = json.loads(line)
    if r.get("status") != "ok":
        print(name, r.get("status"), r.get("error", "")[:200])
        continue
    first, step = r["step_times_s"][0], r["step_s"]
    print(f"{name} process: first step {first:.2f} s, second {step:.2f} s, compile ~{first - step:.2f} s, "
          f"load {r['load_s']:.1f} s, {r['plan']['strategies'][-1]}")
EOF
        } 2>&1 | tee "$OUT/cache.txt"
        unset RUYI_CACHE_DIR ;;
    video)
        weights=""
        if [ -f "$CKPT/ruyi-random-weights.json" ] && [ -d "$CKPT/transformer" ]; then
            weights="bench.weights=checkpoint model.path=$CKPT"
        fi
        # compile=auto as infer.py runs (benchmark.yaml alone pins compile=none)
        measure video 560 frames="$FRAMES" bench.resolution="$SIZE" compile=auto bench.warmup_steps=0 bench.measured_steps="$VIDEO_STEPS" \
            bench.report_steps="$VIDEO_STEPS" $weights
        python3 - "$OUT/video.jsonl" <<'EOF' | tee -a "$OUT/video.log"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("status") == "ok":
        times = r["step_times_s"]
        rest = sum(times[1:]) / max(1, len(times) - 1)
        print(f"video ({r['weights']} weights): load {r['load_s']:.1f} s, encode {r['encode_s']:.1f} s, denoise "
              f"{r['denoise_s']:.1f} s ({len(times)} steps: the first {times[0]:.1f} s, then {rest:.2f} s/step), "
              f"decode {r['decode_s']:.1f} s, sum {r['encode_s'] + r['denoise_s'] + r['decode_s']:.1f} s; "
              f"peak {r['peak_gib']:.1f} GiB; {r['plan']['strategies']}; attention {r['attention']}")
EOF
        ;;
    *) echo "unknown stage $stage"; exit 2 ;;
    esac
done
echo "done in $SECONDS s"
