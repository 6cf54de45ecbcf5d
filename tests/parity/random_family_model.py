"""A base-size question-answering model of a family with random weights, for speed measurements
(no hub is reachable here, and speed does not depend on the weights' values).

    python tests/parity/random_family_model.py FAMILY OUT_DIR

FAMILY: distilbert (distilbert-base's shape: 6 layers, 768 wide) or roberta (roberta-base's:
12 layers, 768 wide). Writes config.json and model.safetensors (float32); the token ids the
benchmarks use are all below both vocabularies' sizes. Needs torch and transformers.
"""

import sys

import torch
from transformers import (
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    RobertaConfig,
    RobertaForQuestionAnswering,
)


def main(family: str, out: str) -> None:
    torch.manual_seed(0)
    if family == "distilbert":
        model = DistilBertForQuestionAnswering(DistilBertConfig())
    elif family == "roberta":
        config = RobertaConfig(
            vocab_size=50265,
            max_position_embeddings=514,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        model = RobertaForQuestionAnswering(config)
    else:
        sys.exit(f"unknown family {family}: distilbert or roberta")
    model.eval().save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
