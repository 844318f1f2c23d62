#!/usr/bin/env bash
# Recipe ablations of issue 16 at equal CPU budget: every arm trains a fresh LoRA (rank 32;
# cc_ar_r8 rank 8) or the whole model (cc_ar_full) from the base model on the same
# self-distilled data (data/distill/general_g0.jsonl) for the same number of steps (160 x 2 x 256 tokens, one thread each, so the arms' wall times
# are comparable and printed), then is measured with scripts/eval_adaptation.py on the
# first 40 held-out general prompts.
#     bash scripts/ablation.sh [ARM ...]     # default: every scripts/ablation/*.json
# Resumable: a finished arm (runs/ablation/NAME.json present) is skipped; a half-trained
# one continues from its latest checkpoint.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
arms=("$@")
[ ${#arms[@]} -gt 0 ] || arms=($(ls scripts/ablation/*.json | xargs -n1 basename | sed 's/.json$//'))
mkdir -p runs/ablation
for arm in "${arms[@]}"; do
    [ -f "runs/ablation/$arm.json" ] && { echo "$arm: done"; continue; }
    cfg=scripts/ablation/$arm.json
    start=$(date +%s)
    nextblock adapt --config "$cfg" --resume  # starts fresh when there is no checkpoint
    echo "$arm: trained in $(( $(date +%s) - start )) s (this call)" | tee -a runs/ablation/times.txt
    b=$(python -c "import json;print(json.load(open('$cfg'))['block_max'])")
    r=$(python -c "import json;print(json.load(open('$cfg'))['lora_r'])")
    # a LoRA arm exports its adapter; the full fine-tuning arm (lora_r 0) the whole model
    nextblock export --model "runs/ablation/$arm" --out "runs/ablation/${arm}_adapter" \
        $([ "$r" -gt 0 ] && echo --adapter) --dtype float16
    python scripts/eval_adaptation.py --model "runs/ablation/${arm}_adapter" --n 40 \
        --block-sizes "$b" --thresholds 0.9,0.5 --verified "$b" --max-new-tokens 128 \
        --loss-n 25 --json "runs/ablation/$arm.json"
done
