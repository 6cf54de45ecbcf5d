"""Loads a directory written by `qa_model::save_pretrained` with Hugging Face transformers, as a
user would, and prints its span logits for the given inputs (one JSON line on stdout).

    python tests/parity/hf_load_saved.py SAVED_DIR INPUTS_JSON [CLASS]

INPUTS_JSON: {"input_ids": [[...]], "token_type_ids": [[...]], "attention_mask": [[...]]}; inputs
the model's forward does not take (DistilBERT has no token types) are left out. CLASS is the
class the directory must load as (default BertForQuestionAnswering).
Fails when transformers reports a missing, unexpected or mismatched tensor, or when the
tokenizer in the directory does not load. Run by qa-model's `hf_transformers` test when
QA_TORCH_PYTHON names a Python with torch and transformers.
"""

import inspect
import json
import sys

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer


def main(saved_dir: str, inputs_path: str, expected_class: str) -> None:
    model, info = AutoModelForQuestionAnswering.from_pretrained(
        saved_dir, output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v}
    if problems:
        sys.exit(f"transformers reported {problems}")
    if type(model).__name__ != expected_class:
        sys.exit(f"loaded as {type(model).__name__}, expected {expected_class}")
    tokenizer = AutoTokenizer.from_pretrained(saved_dir)
    with open(inputs_path) as f:
        accepted = inspect.signature(model.forward).parameters
        inputs = {k: torch.tensor(v) for k, v in json.load(f).items() if k in accepted}
    with torch.inference_mode():
        out = model.eval()(**inputs)
    print(
        json.dumps(
            {
                "start_logits": out.start_logits.tolist(),
                "end_logits": out.end_logits.tolist(),
                "tokenizer": type(tokenizer).__name__,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "BertForQuestionAnswering")
