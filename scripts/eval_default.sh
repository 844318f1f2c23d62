#!/usr/bin/env bash
# The reported evaluation of the default model (issue 6): the plain base model in AR mode and
# the adapted default in AR, block and verified mode, on HumanEval (all 164 problems) and the
# first N problems of GSM8K test and MBPP test (task ids 11..), zero-shot chat prompts.
#
#     bash scripts/eval_default.sh              # N=100, batch 16, into runs/eval/{base,default}
#     N=20 BS=8 OUT=/tmp/ev bash scripts/eval_default.sh
#
# Every run uses --resume, so an interrupted script continues where it stopped. Answers do not
# depend on the batch size (continuous batching; tested); tokens/s is throughput at BS rows.
# Then the speed of one request: the first SPEED_N (10) GSM8K problems at batch 1 in each mode
# of the adapted default, one run after another (0 skips it). Timings need an idle machine.
# Tables: OUT/base/TASK-summary.md, OUT/default/TASK-summary.md, OUT/speed/gsm8k-summary.md.
# DTYPE=float32 (the reported runs; DTYPE=auto: the int8 engine, the CPU default since it
# landed).
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/eval}
BS=${BS:-16}
N=${N:-100}
TASKS=${TASKS:-humaneval gsm8k mbpp}
SPEED_N=${SPEED_N:-10}
DTYPE=${DTYPE:-float32}

for task in $TASKS; do
  case $task in
    humaneval) args=(--task humaneval) ;;
    gsm8k) args=(--task gsm8k --data "$DATA/gsm8k/test.jsonl" --limit "$N") ;;
    mbpp) args=(--task mbpp --data "$DATA/mbpp/mbpp.jsonl" --limit "$N") ;;
    *) echo "unknown task $task" >&2; exit 2 ;;
  esac
  ev() { nextblock eval "${args[@]}" --dtype "$DTYPE" --batch-size "$BS" --resume "$@"; }
  ev --model default-base --mode ar --out "$OUT/base"
  ev --model default --mode ar --out "$OUT/default"
  ev --model default --mode block --block-size 4 --threshold 0.9 --out "$OUT/default"
  ev --model default --mode verified --block-size 4 --threshold 0.0 --out "$OUT/default"
done

if [ "$SPEED_N" -gt 0 ]; then
  for mode in "ar" "block --block-size 4 --threshold 0.9" "verified --block-size 4 --threshold 0.0"; do
    # shellcheck disable=SC2086  # $mode is the mode and its settings
    nextblock eval --task gsm8k --data "$DATA/gsm8k/test.jsonl" --limit "$SPEED_N" \
      --batch-size 1 --resume --dtype "$DTYPE" --model default --mode $mode --out "$OUT/speed"
  done
fi

for task in $TASKS; do
  echo "## $task: base model"; tail -n +3 "$OUT/base/$task-summary.md"
  echo "## $task: adapted default"; tail -n +3 "$OUT/default/$task-summary.md"
done
if [ "$SPEED_N" -gt 0 ]; then
  echo "## batch 1: adapted default"; tail -n +3 "$OUT/speed/gsm8k-summary.md"
fi
