"""The bar to beat: TF-IDF + logistic regression on the same train/test rows as the pipeline.

Reads data/reviews_text.parquet (prepare.py) and the pipeline's split (data/repaired/source/
{train,test}.parquet: their ids), fits on train only, scores the test split. Writes
reports/baseline/metrics.json (accuracy, macro-F1), which `dvc metrics show` lists beside
reports/evaluate/metrics.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline


def main() -> None:
    text = pd.read_parquet("data/reviews_text.parquet").set_index("id")
    train_ids = pd.read_parquet("data/repaired/source/train.parquet", columns=["id"])["id"]
    test_ids = pd.read_parquet("data/repaired/source/test.parquet", columns=["id"])["id"]
    train, test = text.loc[train_ids], text.loc[test_ids]
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                          LogisticRegression(C=4.0, max_iter=2000))
    model.fit(train["text"], train["label"])
    pred = model.predict(test["text"])
    metrics = {"accuracy": round(accuracy_score(test["label"], pred), 6),
               "macro_f1": round(f1_score(test["label"], pred, average="macro"), 6), "samples": int(len(test))}
    Path("reports/baseline").mkdir(parents=True, exist_ok=True)
    Path("reports/baseline/metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"TF-IDF + logistic regression on the test split: {metrics}")


if __name__ == "__main__":
    main()
