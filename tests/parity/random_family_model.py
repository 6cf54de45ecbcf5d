"""A base-size question-answering model of a family with random weights, for speed measurements
(no hub is reachable here, and speed does not depend on the weights' values).

    python tests/parity/random_family_model.py FAMILY OUT_DIR

FAMILY: distilbert (distilbert-base's shape: 6 layers, 768 wide), roberta (roberta-base's:
12 layers, 768 wide) or deberta-v3 (deberta-v3-base's: 12 layers, 768 wide, 256 position
buckets, 128,100 tokens). Writes config.json and model.safetensors (float32); the token ids the
benchmarks use are all below both vocabularies' sizes. Needs torch and transformers.
"""

import sys

import torch
from transformers import (
    DebertaV2Config,
    DebertaV2ForQuestionAnswering,
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
    elif family == "deberta-v3":
        config = DebertaV2Config(  # its defaults are deberta-v2-xlarge's
            vocab_size=128100,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            type_vocab_size=0,
            position_biased_input=False,
            relative_attention=True,
            position_buckets=256,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            layer_norm_eps=1e-7,
        )
        model = DebertaV2ForQuestionAnswering(config)
    else:
        sys.exit(f"unknown family {family}: distilbert, roberta or deberta-v3")
    model.eval().save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
