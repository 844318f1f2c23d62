"""GSM8K *training* split -> chat jsonl ({"messages": [user question, assistant answer]}).

    python scripts/gsm8k_chat.py ../shared/data/gsm8k/train.jsonl runs/data/gsm8k_train_chat.jsonl

The calculator annotations <<48/2=24>> are removed; the final "#### 72" line becomes
"The answer is 72." Refuses a test split.
"""

import json
import re
import sys
from pathlib import Path


def convert(answer: str) -> str:
    answer = re.sub(r"<<[^>]*>>", "", answer)
    body, _, final = answer.rpartition("####")
    return f"{body.strip()}\nThe answer is {final.strip()}."


def main(src: str, dst: str) -> None:
    if "test" in Path(src).name:
        raise SystemExit("refusing to convert a test split for training")
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with open(src) as f, open(dst, "w") as out:
        for line in f:
            r = json.loads(line)
            msgs = [{"role": "user", "content": r["question"]},
                    {"role": "assistant", "content": convert(r["answer"])}]
            out.write(json.dumps({"messages": msgs}) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
