"""Tokenizers of each family's kind at realistic vocabulary sizes, for the windowing benchmark
(`QA_BENCH_TOKENIZERS` in crates/qa-data/benches/windowing.rs): no hub is reachable here, so they
are trained on the text of SQuAD v1.1 train with the pipelines of tests/parity/family_fixtures.py.

    python tests/parity/bench_tokenizers.py ../shared/data/squad/train-v1.1.json OUT_DIR

Writes OUT_DIR/<kind>/tokenizer.json for wordpiece (BERT's pipeline, 30,522 tokens, cased),
bpe (RoBERTa's byte-level BPE, 50,265) and unigram (XLM-R's pipeline; 32,000 tokens, as much as
this text supports, against XLM-R's 250,002). Needs tokenizers (and the fixture script's imports).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import family_fixtures as ff  # noqa: E402

SIZES = {"wordpiece": 30522, "bpe": 50265, "unigram": 32000}


def texts(path):
    data = json.load(open(path, encoding="utf-8"))
    out = []
    for article in data["data"]:
        for p in article["paragraphs"]:
            out.append(p["context"])
            out.extend(qa["question"] for qa in p["qas"])
    return out


def main(train, out):
    corpus = texts(train)
    for kind, size in SIZES.items():
        ff.VOCAB_SIZE = size
        if kind == "wordpiece":
            ff.WORDPIECE_ALPHABET = 1000
            tok, _ = ff.wordpiece_tokenizer(corpus, lowercase=False)
        elif kind == "bpe":
            tok, _ = ff.byte_level_bpe_tokenizer(corpus)
        else:
            tok, _ = ff.unigram_tokenizer(corpus)
        d = Path(out) / kind
        d.mkdir(parents=True, exist_ok=True)
        tok.save(str(d / "tokenizer.json"))
        print(kind, tok.get_vocab_size(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
