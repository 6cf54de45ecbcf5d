"""PyTorch CPU reference for `cargo bench -p qa-model --bench inference`: a question-answering
model (MiniLM-L6 with a span head, or any family AutoModelForQuestionAnswering loads), forward
pass, 2 threads, same shapes and token ids as the Rust benchmark (token types only where the
model has two).

    python tests/parity/torch_latency.py ../shared/models/all-MiniLM-L6-v2

Needs torch and transformers (CPU is enough). Prints the mean of 20 timed runs after 3 warm-ups,
then one JSON line {"torch": version, "bs1-seq128": ms, ...} for `cargo xtask bench`.
"""

import json
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForQuestionAnswering


def main(model_dir: str) -> None:
    torch.set_num_threads(2)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir, dtype=torch.float32).eval()
    two_types = getattr(config, "type_vocab_size", 0) > 1
    results = {"torch": torch.__version__}
    for batch, seq in [(1, 128), (1, 384), (8, 384)]:
        n = batch * seq
        ids = torch.tensor([1000 + (i * 7919 % 20000) for i in range(n)]).view(batch, seq)
        types = torch.tensor([int(i % seq >= seq // 4) for i in range(n)]).view(batch, seq)
        mask = torch.ones(batch, seq, dtype=torch.long)
        inputs = {"input_ids": ids, "attention_mask": mask}
        if two_types:
            inputs["token_type_ids"] = types
        with torch.inference_mode():
            for _ in range(3):
                model(**inputs)
            runs = 20
            start = time.perf_counter()
            for _ in range(runs):
                model(**inputs)
            ms = (time.perf_counter() - start) / runs * 1000
        print(f"bs{batch}-seq{seq}: {ms:.1f} ms", file=sys.stderr)
        results[f"bs{batch}-seq{seq}"] = ms
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
