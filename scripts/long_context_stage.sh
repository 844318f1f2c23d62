#!/usr/bin/env bash
# A long-context stage for the adapted default, then the retrieval probe and loss with it
# (compare with the probe without it: `python bench/long_context.py probe --lengths 1024,4096`).
# Run from the repository root with the venv active; resumable (rerun it after a stop).
# Sized for this 2-core CPU: 4096 tokens per row (inside the base model's 8192 window, the
# length where the probe fails without a stage), 16 steps of batch 1. On a GPU, raise
# seq_len to 8192-32768, add "rope_scaling": "yarn:4" beyond 8192, and many more steps.
set -euo pipefail
# 1. long documents (standard-library sub-packages; never the probe's filler) and chat data
python scripts/long_corpus.py runs/data/long_code.jsonl --min-bytes 48000
[ -f runs/data/gsm8k_train_chat.jsonl ] || \
    python scripts/gsm8k_chat.py ../shared/data/gsm8k/train.jsonl runs/data/gsm8k_train_chat.jsonl
# 2. the stage: from the shipped adapter, packed documents, chunked attention (a checkpoint
#    every step: 6-10 minutes per step here with 1 thread)
nextblock adapt --config scripts/long_context_stage.json --resume ${STOP_AT:+--stop-at $STOP_AT}
nextblock export --model runs/long_stage --out runs/long_stage_adapter --adapter --dtype float16
# 3. the probe with the stage
python bench/long_context.py probe --model runs/long_stage_adapter --lengths 1024,4096 \
    --trials 4 --json runs/bench/probe_long_stage.json
# 4. the AR loss of held-out tokens by context length, with the stage (compare with
#    `--model default` and `--model default-base`)
python bench/long_context.py loss --model runs/long_stage_adapter --lengths 4096 --windows 4 \
    --json runs/bench/loss_long_stage.json
