#!/usr/bin/env bash
# Reproduces the adapted default model shipped in nextblock/assets/default (2-core CPU).
# Run from the repository root with the venv active. Never uses a test split for training.
# Two stages: (1) human GSM8K answers + a few self-distilled ones, curriculum 1 -> 2 -> 4;
# (2) continued on far more self-distilled answers at b = 4.
set -euo pipefail
# 1. self-distillation: the base model's own greedy answers (64 GSM8K train questions,
#    batch 16; answers that did not end within 256 tokens are dropped: 47 kept)
python scripts/distill.py --questions ../shared/data/gsm8k/train.jsonl \
    --out runs/distill/gsm8k_train.jsonl --limit 64 --batch 16 --model default-base
# 2. the GSM8K training split in chat form
python scripts/gsm8k_chat.py ../shared/data/gsm8k/train.jsonl runs/data/gsm8k_train_chat.jsonl
# 3. stage 1: LoRA adaptation, planned for 700 steps, ended on the step-600 checkpoint
nextblock adapt --config scripts/adapt_default.json --resume --stop-at 600
nextblock export --model runs/default --out runs/default_v1 --adapter --dtype float16
# 4. more self-distillation, int8 for speed (appends to the same file: 245 answers kept of
#    the first 420 questions). Those answers came from the fbgemm int8 linear layers of
#    nextblock/quant.py, removed when the int8 engine replaced them (commit c1e707a): to
#    regenerate exactly that file, run this step from commit b922648. From now on
#    --quantize int8 means the engine, whose answers differ.
python scripts/distill.py --questions ../shared/data/gsm8k/train.jsonl \
    --out runs/distill/gsm8k_train.jsonl --limit 420 --batch 32 --model default-base \
    --quantize int8
# 5. stage 2: from the stage-1 adapter, b = 4, planned for 600 steps, ended at step 475
nextblock adapt --config scripts/adapt_distill.json --resume --stop-at 475
# 6. the shipped artefact: LoRA adapter + mask embedding in float16, nextblock.json
nextblock export --model runs/distill_v2 --out nextblock/assets/default --adapter \
    --dtype float16
# 7. held-out measurements (GSM8K test questions, evaluation only)
python scripts/eval_adaptation.py --model default --n 12 --block-size 4 \
    --thresholds 0.9,0.5 --verified 0.0 --max-new-tokens 128
