"""Loads a directory written by `qa_model::save_pretrained` with Hugging Face transformers, as a
user would, and prints its span logits for the given inputs (one JSON line on stdout).

    python tests/parity/hf_load_saved.py SAVED_DIR INPUTS_JSON

INPUTS_JSON: {"input_ids": [[...]], "token_type_ids": [[...]], "attention_mask": [[...]]}.
Fails when transformers reports a missing, unexpected or mismatched tensor, or when the
tokenizer in the directory does not load. Run by qa-model's `hf_transformers` test when
QA_TORCH_PYTHON names a Python with torch and transformers.
"""

import json
import sys

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer


def main(saved_dir: str, inputs_path: str) -> None:
    model, info = AutoModelForQuestionAnswering.from_pretrained(
        saved_dir, output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v}
    if problems:
        sys.exit(f"transformers reported {problems}")
    if type(model).__name__ != "BertForQuestionAnswering":
        sys.exit(f"loaded as {type(model).__name__}")
    tokenizer = AutoTokenizer.from_pretrained(saved_dir)
    with open(inputs_path) as f:
        inputs = {k: torch.tensor(v) for k, v in json.load(f).items()}
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
    main(sys.argv[1], sys.argv[2])
