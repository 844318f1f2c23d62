#!/usr/bin/env bash
# Reproduces the adapted default model shipped in nextblock/assets/default (2-core CPU).
# Run from the repository root with the venv active. Never uses a test split for training.
set -euo pipefail
# 1. self-distillation: the base model's own greedy answers (64 GSM8K train questions,
#    batch 16; answers that did not end within 256 tokens are dropped)
python scripts/distill.py --questions ../shared/data/gsm8k/train.jsonl \
    --out runs/distill/gsm8k_train.jsonl --limit 64 --batch 16 --model default-base
# 2. the GSM8K training split in chat form
python scripts/gsm8k_chat.py ../shared/data/gsm8k/train.jsonl runs/data/gsm8k_train_chat.jsonl
# 3. LoRA adaptation (settings in the JSON file), resumable with --resume
nextblock adapt --config scripts/adapt_default.json --resume
# 4. the shipped artefact: LoRA adapter + mask embedding in float16, nextblock.json
nextblock export --model runs/default --out nextblock/assets/default --adapter --dtype float16
# 5. held-out measurements (GSM8K test questions, evaluation only)
python scripts/eval_adaptation.py --model default --n 16 --block-size 4 --thresholds 0.9,0.5
