#!/usr/bin/env python3
"""Writes demo/eval-sample.jsonl: a fixed slice of the corpus valid split
(every language and domain it holds, in proportion, about 200 KB) that the
README's main command evaluates the quantized demo model on. The demo model
was trained on the train split only, so this text is held out.

    python3 demo/make_eval_sample.py [CORPUS_DIR]   (default ../shared/corpus)
"""
import json
import lzma
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "shared", "corpus")
docs = [json.loads(l) for l in lzma.open(os.path.join(corpus, "valid.jsonl.xz"), "rt")]
budget = 200_000
total = sum(len(d["text"]) for d in docs)
picked, used = [], 0
# Every k-th document keeps the language mix of the split.
step = max(1, round(total / budget))
for i, d in enumerate(docs):
    if i % step == 0:
        picked.append({k: d[k] for k in ("text", "lang", "domain")})
        used += len(d["text"])
with open(os.path.join(here, "eval-sample.jsonl"), "w", encoding="utf-8") as f:
    for d in picked:
        f.write(json.dumps(d, ensure_ascii=False) + "\n")
print(f"{len(picked)} documents, {used} characters")
