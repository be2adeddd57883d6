"""Build a tiny seq2seq model from a config and the digit-reversal task it can learn.

    python scripts/make_tiny_seq2seq.py runs/tiny_t5               # T5 (recipes/tiny_t5_seq2seq.yaml)
    python scripts/make_tiny_seq2seq.py runs/tiny_bart --kind bart # the model the CI check trains

writes

    OUT_DIR/model/                 config.json, model.safetensors, tokenizer files (random weights)
    OUT_DIR/data/train.jsonl       {"prompt": "40213", "completion": "31204"}, one per line
    OUT_DIR/data/validation.jsonl  held-out inputs, none of them in train.jsonl

The model (2 + 2 layers, d_model 64) and its tokenizer (the embedded SmolLM2 tokenizer cut to its
special tokens and 256 byte symbols, ids unchanged) come from `tests/tiny.py`, the same builder
`tests/test_seq2seq_learns.py` uses; so does the task (`reversal_task`). The data folder is a
`dataset_name` as it is: `train` and `validation` splits, evaluated by `finetune eval`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny import build_byte_seq2seq, reversal_task  # noqa: E402


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to create (model/ and data/ go inside)")
    parser.add_argument("--kind", choices=("t5", "bart"), default="t5",
                        help="t5 (default, for recipes/tiny_t5_seq2seq.yaml) or bart (learns the "
                             "task ~10x faster; the CI check's model)")
    parser.add_argument("--train", type=int, default=20_000, help="training rows (default 20000)")
    parser.add_argument("--validation", type=int, default=200, help="held-out rows (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    args = parser.parse_args(argv)
    if args.train < 1 or args.validation < 1:
        parser.error("--train and --validation must be at least 1")
    out = Path(args.out_dir)
    model_dir = build_byte_seq2seq(args.kind, out / "model")
    train, validation = reversal_task(args.train, args.validation, seed=args.seed)
    write_jsonl(out / "data" / "train.jsonl", train)
    write_jsonl(out / "data" / "validation.jsonl", validation)
    print(f"{args.kind} model: {model_dir}\ndata: {out / 'data'} ({len(train)} train, "
          f"{len(validation)} validation rows: reverse 3-6 digits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
