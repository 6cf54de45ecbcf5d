"""PyTorch + transformers reference for `qa train`: fine-tunes the same model on the same SQuAD
file with the same recipe, and saves a Hugging Face directory that `qa evaluate --model DIR`
then scores exactly as it scores ours (same windowing, decoding and official metrics).

The recipe is run_qa.py's: fast-tokenizer windows (only_second truncation, stride, offsets),
a window without the whole answer labelled [CLS]; AdamW (torch) without weight decay on biases
and LayerNorm parameters (found by module type, so DistilBERT's sa_layer_norm counts too, as in
`qa train`; run_qa's name rule "LayerNorm.weight" misses it); linear warmup then linear decay
(transformers' get_linear_schedule_with_warmup); global-norm clipping; shuffled batches padded to
their longest feature; dropout on; 2 threads. Any family AutoModelForQuestionAnswering loads
works (BERT, DistilBERT, RoBERTa, XLM-R, ELECTRA); the model is trained in float32.

usage: torch_finetune.py MODEL_DIR TRAIN_JSON OUT_DIR [--max-seq-length N] [--doc-stride N]
       [--epochs N] [--batch-size N] [--lr X] [--warmup-ratio X] [--weight-decay X]
       [--max-grad-norm X] [--seed N] [--dropout X] [--save-init DIR] [--log-steps]
       [--no-shuffle] [--order FILE] [--mask-padding] [--dropout-masks FILE]
       [--max-steps N]
Prints a progress line per epoch (with --log-steps, one per step) and one JSON line at the end.

For step-by-step comparisons with `qa train`: --save-init writes the starting weights (encoder and
the freshly initialised span head) as a Hugging Face directory that both trainers can start from;
--dropout 0 removes the only randomness inside a step; a batch as large as the training set makes
the batch order irrelevant (--no-shuffle keeps the file order), and --order FILE takes the
per-epoch orders `qa train` uses (`cargo run -p qa-train --example epoch_order`); --log-steps
prints the loss of every update; --mask-padding computes the loss as `qa train` does, with the
span logits of padding positions masked (transformers leaves them in the softmax);
--dropout-masks FILE drops, in every dropout call, the elements `qa train` dropped (masks are
indexed by position in the batch, so use it with --order; `cargo run -p qa-train --example
record_dropout` writes them); --max-steps N stops after N updates without changing the schedule
(to compare the start of a long run). crates/qa-train/tests/torch_parity.rs uses these.
"""

import argparse
import json
import math
import os
import shutil
import time

import torch
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)

TOKENIZER_FILES = ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]


def squad_examples(path):
    """(question, context, answer text, answer start) for every answerable question."""
    with open(path) as f:
        doc = json.load(f)
    data = doc["data"] if isinstance(doc, dict) else doc
    for article in data:
        for paragraph in article.get("paragraphs", [article]):
            for qa in paragraph["qas"]:
                if qa.get("is_impossible") or not qa.get("answers"):
                    continue
                answer = qa["answers"][0]
                yield qa["question"].lstrip(), paragraph["context"], answer["text"], answer[
                    "answer_start"
                ]


def windows(tokenizer, examples, max_len, stride):
    """run_qa.py's prepare_train_features: one dict per window with its start/end labels."""
    questions = [e[0] for e in examples]
    contexts = [e[1] for e in examples]
    enc = tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=max_len,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        _, _, text, start_char = examples[enc["overflow_to_sample_mapping"][i]]
        end_char = start_char + len(text)
        seq_ids = enc.sequence_ids(i)
        first = seq_ids.index(1)
        last = len(seq_ids) - 1 - seq_ids[::-1].index(1)
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            start, end = 0, 0
        else:
            start = first
            while start <= last and offsets[start][0] <= start_char:
                start += 1
            start -= 1
            end = last
            while end >= first and offsets[end][1] >= end_char:
                end -= 1
            end += 1
        feature = {"input_ids": enc["input_ids"][i], "start": start, "end": end}
        if "token_type_ids" in enc:
            feature["token_type_ids"] = enc["token_type_ids"][i]
        features.append(feature)
    return features


def collate(batch, pad_id):
    longest = max(len(f["input_ids"]) for f in batch)

    def pad(key, value):
        return torch.tensor([f[key] + [value] * (longest - len(f[key])) for f in batch])

    mask = torch.tensor(
        [[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in batch]
    )
    out = {
        "input_ids": pad("input_ids", pad_id),
        "attention_mask": mask,
        "start_positions": torch.tensor([f["start"] for f in batch]),
        "end_positions": torch.tensor([f["end"] for f in batch]),
    }
    if "token_type_ids" in batch[0]:
        out["token_type_ids"] = pad("token_type_ids", 0)
    return out


def span_loss(model, batch):
    """The question-answering models' loss with the logits of padding positions masked."""
    labels = {k: batch[k] for k in ("start_positions", "end_positions")}
    out = model(**{k: v for k, v in batch.items() if k not in labels})
    padding = batch["attention_mask"] == 0
    ce = torch.nn.functional.cross_entropy
    start = out.start_logits.masked_fill(padding, -1e4)
    end = out.end_logits.masked_fill(padding, -1e4)
    return (ce(start, labels["start_positions"]) + ce(end, labels["end_positions"])) / 2


def replay_dropout(path):
    """Makes every dropout call drop what `qa train` dropped: `path` is a JSON list of the masks
    our CPU training drew, `{"elements": N, "key": K}` in call order
    (qa_model::kernels::recording_dropout_masks). Element i of the (row-major) input is dropped
    when lowbias32(lowbias32(i ^ k0) ^ k1) < p * 2^32, k0 and k1 the low and high halves of K."""
    import numpy as np

    with open(path) as f:
        masks = iter(json.load(f))

    def lowbias32(x):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))

    def dropout(input, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:
            return input
        mask = next(masks)
        n, key = mask["elements"], mask["key"]
        assert n == input.numel(), f"a dropout call over {input.numel()} elements, ours had {n}"
        k0, k1 = np.uint32(key & 0xFFFFFFFF), np.uint32(key >> 32)
        with np.errstate(over="ignore"):
            h = lowbias32(lowbias32(np.arange(n, dtype=np.uint32) ^ k0) ^ k1)
        keep = torch.from_numpy(h >= np.uint32(int(p * 4294967296.0))).reshape(input.shape)
        return input * (keep.to(input.dtype) * torch.tensor(1.0 / (1.0 - p), dtype=input.dtype))

    torch.nn.functional.dropout = dropout
    return masks


def save(model, model_dir, out):
    """The model as a Hugging Face directory, with the tokenizer files of `model_dir`."""
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        src = os.path.join(model_dir, name)
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(out, name))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("train")
    p.add_argument("out")
    p.add_argument("--max-seq-length", type=int, default=384)
    p.add_argument("--doc-stride", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--save-init", default=None)
    p.add_argument("--log-steps", action="store_true")
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--order", default=None)
    p.add_argument("--mask-padding", action="store_true")
    p.add_argument("--dropout-masks", default=None)
    p.add_argument("--max-steps", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    started = time.perf_counter()
    features = windows(
        tokenizer, list(squad_examples(args.train)), args.max_seq_length, args.doc_stride
    )
    overrides = {"dtype": torch.float32}
    if args.dropout is not None:
        if AutoConfig.from_pretrained(args.model).model_type == "distilbert":
            keys = ("dropout", "attention_dropout", "qa_dropout")
        else:
            keys = ("hidden_dropout_prob", "attention_probs_dropout_prob")
        overrides.update({k: args.dropout for k in keys})
    if args.dropout_masks:
        # Eager attention, so that the attention probabilities' dropout is a dropout call too.
        overrides["attn_implementation"] = "eager"
        replayed = replay_dropout(args.dropout_masks)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model, **overrides)
    if args.save_init:
        save(model, args.model, args.save_init)
    model.train()
    norms = {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.LayerNorm)
        for p in m.parameters()
    }
    no_decay = lambda n, p: n.endswith("bias") or id(p) in norms  # noqa: E731
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not no_decay(n, p)],
            "weight_decay": args.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if no_decay(n, p)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    steps_per_epoch = math.ceil(len(features) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = math.ceil(total * args.warmup_ratio)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, total)
    order = torch.Generator().manual_seed(args.seed)
    orders = None
    if args.order:
        with open(args.order) as f:
            orders = json.load(f)
        for o in orders:
            assert sorted(o) == list(range(len(features))), "--order: not a permutation"
    train_seconds, updates, trained = 0.0, 0, 0
    for epoch in range(args.epochs):
        losses = []
        for step in range(steps_per_epoch):
            if step == 0:
                perm = torch.randperm(len(features), generator=order).tolist()
                if args.no_shuffle:
                    perm = list(range(len(features)))
                if orders:
                    perm = orders[epoch]
            t0 = time.perf_counter()
            idx = perm[step * args.batch_size : (step + 1) * args.batch_size]
            batch = collate([features[i] for i in idx], tokenizer.pad_token_id)
            loss = span_loss(model, batch) if args.mask_padding else model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            train_seconds += time.perf_counter() - t0
            losses.append(loss.item())
            updates += 1
            trained += len(idx)
            if args.log_steps:
                print(f"step {updates}: loss {loss.item():.6f}", flush=True)
            if updates == args.max_steps:
                break
        print(f"epoch {epoch + 1}: mean loss {sum(losses) / len(losses):.4f}", flush=True)
        if updates == args.max_steps:
            break

    if args.dropout_masks and not args.max_steps:
        assert next(replayed, None) is None, "qa train drew more dropout masks than this run used"
    save(model, args.model, args.out)
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "features": len(features),
                "steps": updates,
                "features_per_second": trained / train_seconds if train_seconds else 0.0,
                "seconds": time.perf_counter() - started,
            }
        )
    )


if __name__ == "__main__":
    main()
