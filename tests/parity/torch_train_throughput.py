"""PyTorch CPU reference for the training benchmark (`configs/bench-train-cpu.toml`): MiniLM-L6
with a span head, seq 384, batch 8, AdamW lr 5e-5, dropout on, 2 threads, the same number of
optimizer steps, every step timed as `qa train` times them (the first one included).

    python tests/parity/torch_train_throughput.py ../shared/models/all-MiniLM-L6-v2 [steps]

Needs torch and transformers (CPU is enough). Prints one line per step, then one JSON line
{"torch": version, "steps": n, "features_per_second": f} for `cargo xtask bench`.
"""

import json
import sys
import time

import torch
from transformers import BertConfig, BertForQuestionAnswering


def main(model_dir: str, steps: int) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(42)
    batch, seq = 8, 384
    config = BertConfig.from_pretrained(model_dir)
    model = BertForQuestionAnswering.from_pretrained(model_dir, config=config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
    n = batch * seq
    ids = torch.tensor([1000 + (i * 7919 % 20000) for i in range(n)]).view(batch, seq)
    types = torch.tensor([int(i % seq >= seq // 4) for i in range(n)]).view(batch, seq)
    mask = torch.ones(batch, seq, dtype=torch.long)
    starts = torch.tensor([(97 + 31 * i) % seq for i in range(batch)])
    ends = torch.clamp(starts + 3, max=seq - 1)
    elapsed = 0.0
    for step in range(steps):
        start = time.perf_counter()
        out = model(
            input_ids=ids,
            token_type_ids=types,
            attention_mask=mask,
            start_positions=starts,
            end_positions=ends,
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        took = time.perf_counter() - start
        elapsed += took
        print(f"step {step + 1}: loss {out.loss.item():.4f}, {took:.2f} s", file=sys.stderr)
    fps = steps * batch / elapsed
    print(f"{fps:.2f} features/s", file=sys.stderr)
    print(json.dumps({"torch": torch.__version__, "steps": steps, "features_per_second": fps}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8)
