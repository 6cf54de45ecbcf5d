"""Tiny random question-answering models of six Hugging Face families, with the answers
transformers gives for them, as fixtures for the Rust tests (which then need neither torch nor
transformers).

Run from the repository root (CPU only, half a minute, no network):

    /work/torchenv/bin/python tests/parity/family_fixtures.py [OUT_DIR]

    (any Python with torch, transformers >= 5, tokenizers and numpy will do; OUT_DIR defaults to
    tests/fixtures/families; the run is deterministic: rerunning it rewrites the same bytes, as
    the sha256 prefixes it prints show; it was written against torch 2.15, transformers 5.24,
    tokenizers 0.23)

It writes, under OUT_DIR:

    questions.json            a SQuAD v1.1 file: 12 questions (ids kept) of
                              datasets/squad-sample/dev.json on 5 paragraphs (see SELECTION and
                              EXTRA_IDS), with "2½", "Beyoncé", "–" and "°" in the contexts, and
                              answers in a second or later window (checked in every family)
    <family>/config.json      for each family in bert, distilbert, roberta, xlm-roberta, electra,
                              deberta-v2 (DeBERTa-v3's settings: no absolute positions, no token
                              types, relative attention c2p+p2c with shared keys, 64 log buckets
                              so that distances past 32 in the 96-token windows share buckets,
                              weights drawn at initializer_range 0.2, see DEBERTA_INIT_RANGE)
                              (with "dtype": "float16", as transformers writes it for the weights):
    <family>/model.safetensors  a <Family>ForQuestionAnswering with random weights stored as float16
                              (hidden 32, 2 layers, 4 heads, intermediate 48; ELECTRA embeds in 16
                              and projects), LayerNorm parameters and all biases perturbed so that
                              none is 1 or 0 (in float16 too, see round_to_float16), the output layer
                              (qa_outputs.weight) scaled by 10 so that logits spread over a few units
                              and no two answers nearly tie
    <family>/tokenizer.json   the family's tokenizer pipeline (WordPiece, byte-level BPE or
                              SentencePiece Unigram, for XLM-R and DeBERTa-v3 with their own
                              special tokens and templates) trained with `tokenizers` on the text of
                              datasets/squad-sample/train.json, 600 tokens (bert and electra share
                              one; the trainers' run-to-run variations are removed, see
                              wordpiece_tokenizer and unigram_tokenizer)
    <family>/tokenizer_config.json   what AutoTokenizer.from_pretrained(OUT_DIR/<family>) needs
    <family>/expected.json    what Hugging Face's run_qa.py / utils_qa.py make of questions.json with
                              that model and tokenizer (max_seq_length 96, doc_stride 24):
      {"family", "model_type", "window": {"max_seq_length", "doc_stride", "max_query_length"},
       "features": [{"example_id", "input_ids" (unpadded), "token_type_ids" (null when the tokenizer
                     returns none), "offsets" ([start, end) code points in the context for context
                     tokens, null for question and special tokens), "start_logits", "end_logits"
                     (one per unpadded token)}],          prepare_validation_features, in order
       "train_labels": [{"example_id", "start_position", "end_position"}],
                                                         prepare_train_features, same features
       "predictions": {id: text},                       postprocess_qa_predictions, n_best_size 20,
       "nbest": {id: [{"text", "start_logit", "end_logit"}] (top 5)}    max_answer_length 30, v1.1}

Notes on what "as run_qa does" means here:
  * The question is lstrip()ed, then `tokenizer(question, context, truncation="only_second",
    max_length=96, stride=24, return_overflowing_tokens=True, return_offsets_mapping=True)`.
  * Labels follow run_qa's loop literally, including its quirk: when the answer starts in the last
    context token of a window, start_position runs past the context onto the last token (the final
    separator) and ends up after end_position. Such rows would be kept as run_qa produces them, and
    the first dev question that makes one is added, but with these tokenizers no dev question of at
    most 32 tokens does.
  * The weights are rounded to float16 before anything is computed, and the model then runs in
    fp32 eval mode with those float16 values (as a reader that upcasts model.safetensors to
    float32 does; the script checks that AutoModelForQuestionAnswering.from_pretrained(dir,
    dtype=torch.float32) of what it wrote gives bit-identical logits) on the features padded to 96
    (attention mask set); each row of logits is then cut to the feature's unpadded length. The
    post-processing sees those unpadded rows (run_qa with --pad_to_max_length False: logits of
    padding positions never take one of the n_best_size slots). Floats are written with 5
    decimals (the logits all lie within +-10, so that is 6 significant digits at most, an error of
    5e-6 at most); the script checks that the rounded logits (read as float32) give the same
    predictions and the same 5 best texts, in the same order, as the exact ones, and prints the
    smallest score gaps among those.
  * Questions are kept only when no family's tokenizer makes more than max_query_length = 32 tokens
    of them (special tokens not counted), so cutting questions to max_query_length changes nothing
    (run_qa never cuts them).
"""
import argparse
import collections
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # serial training: same vocab every run

import numpy as np
import torch
from safetensors.torch import load_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    BertConfig,
    BertForQuestionAnswering,
    DebertaV2Config,
    DebertaV2ForQuestionAnswering,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    ElectraConfig,
    ElectraForQuestionAnswering,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForQuestionAnswering,
    XLMRobertaConfig,
    XLMRobertaForQuestionAnswering,
)
from transformers.utils import logging as hf_logging

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "datasets/squad-sample/train.json"
DEV = REPO / "datasets/squad-sample/dev.json"

MAX_SEQ_LENGTH = 96
DOC_STRIDE = 24
MAX_QUERY_LENGTH = 32
N_BEST_SIZE = 20
MAX_ANSWER_LENGTH = 30
NBEST_KEPT = 5
VOCAB_SIZE = 600
BATCH_SIZE = 32
QA_OUTPUT_SCALE = 10.0
# Without absolute positions, a random DeBERTa at initializer_range 0.02 gives each token nearly
# the same logits wherever it stands (attention adds little to the normalised embeddings), so
# different spans ending in the same piece tie to 1e-5. Weights ten times larger let context
# matter (and spread the logits without scaling the output layer).
DEBERTA_INIT_RANGE = 0.2

FAMILIES = ["bert", "distilbert", "roberta", "xlm-roberta", "electra", "deberta-v2"]
SEEDS = {"bert": 1001, "distilbert": 1002, "roberta": 1003, "xlm-roberta": 1004, "electra": 1005, "deberta-v2": 1006}

# The questions: for each (article title, paragraph index in dev.json), `n` questions (the
# shortest, see select_examples); EXTRA_IDS adds questions wherever they are.
SELECTION = [
    ("Super_Bowl_50", 2, 5),  # 347 chars, "2½"; answers in later windows
    ("Super_Bowl_50", 3, 4),  # 394 chars, "Beyoncé", "$5 million"
    ("Sky_(United_Kingdom)", 0, 1),  # 508 chars, "90.04%"
    ("Oxygen", 2, 1),  # 544 chars, "–"
]
EXTRA_IDS = [
    # Amazon_rainforest p1: 709 chars with "–" and "°", many windows; the question ends in a space
    # (Metaspace makes a lone "▁" token of it). (The one dev question with leading whitespace,
    # 57283adcff5b5019007d9f94, is too long for XLM-R's tokenizer here.)
    "5725be0f271a42140099d119",
]
# Also taken (see select_examples): the first dev question whose run_qa label hits the
# last-context-token quirk in some family, if there is one.


# ----------------------------------------------------------------------------------------------
# Data


def squad_examples(path):
    """[(article_index, paragraph_index, title, context, qa)] in file order."""
    data = json.load(open(path, encoding="utf-8"))
    out = []
    for ai, article in enumerate(data["data"]):
        for pi, p in enumerate(article["paragraphs"]):
            for qa in p["qas"]:
                out.append((ai, pi, article["title"], p["context"], qa))
    return out


def training_texts():
    data = json.load(open(TRAIN, encoding="utf-8"))
    texts = []
    for article in data["data"]:
        for p in article["paragraphs"]:
            texts.append(p["context"])
            for qa in p["qas"]:
                texts.append(qa["question"])
    return texts


# ----------------------------------------------------------------------------------------------
# Tokenizers


WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDPIECE_ALPHABET = 100  # WordPieceTrainer's limit_alphabet: words with rarer characters become [UNK]
CONTINUATION_BASE = 0xF0000  # Supplementary Private Use Area-A, absent from the training text


def wordpiece_tokenizer(texts, lowercase):
    """BERT's pipeline, its vocabulary learnt as `tokenizers`' WordPieceTrainer does, deterministically.

    WordPieceTrainer (a BpeTrainer with continuing_subword_prefix "##") is not deterministic: it
    breaks ties between equally frequent characters at the limit_alphabet cut, and numbers the
    "##x" pieces, whose ids then break ties between equally frequent pairs, in hash-map order. So
    the same steps are taken here with the ties broken by code point: words are normalized and
    pre-tokenized by this tokenizer's own normalizer and pre-tokenizer, characters outside the
    WORDPIECE_ALPHABET most frequent ones are dropped (as the trainer drops them), every
    non-initial character is written as a private-use character of its own (the trainer's "##x"),
    and a plain BpeTrainer (deterministic: its alphabet is numbered in code point order and its
    merges are ordered by count, then by pair ids) learns the merges; its vocabulary is then read
    back with "##" for the private-use characters.
    """
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")

    sentences = [
        [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(t))] for t in texts
    ]
    char_counts = collections.Counter(c for words in sentences for w in words for c in w)
    assert not any(ord(c) >= CONTINUATION_BASE for c in char_counts)
    alphabet = sorted(sorted(char_counts, key=lambda c: (-char_counts[c], ord(c)))[:WORDPIECE_ALPHABET])
    continuation = {c: chr(CONTINUATION_BASE + i) for i, c in enumerate(alphabet)}
    original = {v: k for k, v in continuation.items()}

    def encode(word):
        return "".join(c if k == 0 else continuation[c] for k, c in enumerate(word) if c in continuation)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=WORDPIECE_SPECIALS, initial_alphabet=alphabet, show_progress=False
    )
    bpe.train_from_iterator((" ".join(encode(w) for w in words) for words in sentences), trainer)

    vocab = {}
    for piece, i in bpe.get_vocab().items():
        if piece not in WORDPIECE_SPECIALS:
            assert all(c in original for c in piece[1:]), piece
            piece = ("##" if piece[0] in original else "") + "".join(original.get(c, c) for c in piece)
        vocab[piece] = i
    assert len(vocab) == bpe.get_vocab_size() and sorted(vocab.values()) == list(range(len(vocab)))
    tok.model = models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in WORDPIECE_SPECIALS])
    assert [tok.token_to_id(t) for t in WORDPIECE_SPECIALS] == [0, 1, 2, 3, 4]
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    special = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    return tok, special


ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
ROBERTA_SPECIAL_KWARGS = dict(
    bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
    mask_token="<mask>",
)


def byte_level_bpe_tokenizer(texts):
    """RoBERTa's pipeline. BpeTrainer with the whole byte alphabet given is deterministic (the
    alphabet is numbered in code point order, merges are ordered by count, then by pair ids)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=ROBERTA_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")),  # sep
        ("<s>", tok.token_to_id("<s>")),  # cls
        trim_offsets=True,
        add_prefix_space=False,
    )
    return tok, dict(ROBERTA_SPECIAL_KWARGS)


DEBERTA_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]


def unigram_tokenizer(texts, specials=ROBERTA_SPECIALS):
    """XLM-R's pipeline (NFKC standing in for its precompiled normalizer) with a UnigramTrainer vocabulary,
    or DeBERTa-v3's (the same pipeline with specials=DEBERTA_SPECIALS and BERT's pair template).

    UnigramTrainer's result varies a little from run to run, and is made canonical here: the
    characters it adds at the end (required but pruned away) get the scores min_score,
    min_score + 1e-4, ... in hash-set order, here given out in code point order instead (with
    the pieces EM left at min_score itself); all scores wobble in their last bits (sums in
    hash-map order) and are rounded to 9 decimals; pieces are then numbered by descending score,
    ties by code points.
    """
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        unk_token=specials[3],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)

    trained = json.loads(tok.to_str())["model"]
    assert [p for p, _ in trained["vocab"][:5]] == specials and trained["unk_id"] == 3
    pieces = [(p, score) for p, score in trained["vocab"][5:]]
    lowest = min(score for _, score in pieces)

    def on_grid(score):  # finalize(): model.min_score + k * 1e-4 (EM's least pieces tie at k = 0)
        k = round((score - lowest) / 1e-4)
        return k < len(pieces) and abs(score - lowest - k * 1e-4) < 1e-9

    added = sorted(p for p, score in pieces if on_grid(score))
    added_scores = sorted(round(score, 9) for p, score in pieces if on_grid(score))
    rescored = dict(zip(added, added_scores))
    pieces = [(p, rescored.get(p, round(score, 9))) for p, score in pieces]
    pieces.sort(key=lambda ps: (-ps[1], [ord(c) for c in ps[0]]))
    vocab = [(p, 0.0) for p in specials] + pieces
    tok.model = models.Unigram(vocab, unk_id=3, byte_fallback=False)
    if specials == DEBERTA_SPECIALS:
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        special = dict(bos_token="[CLS]", eos_token="[SEP]", unk_token="[UNK]", sep_token="[SEP]",
                       pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
        return tok, special

    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    return tok, dict(ROBERTA_SPECIAL_KWARGS)


def build_tokenizer(family, texts):
    if family in ("bert", "electra"):
        tok, special = wordpiece_tokenizer(texts, lowercase=True)
        names = ["input_ids", "token_type_ids", "attention_mask"]
    elif family == "distilbert":
        tok, special = wordpiece_tokenizer(texts, lowercase=False)
        names = ["input_ids", "attention_mask"]  # as DistilBertTokenizer: no token_type_ids
    elif family == "roberta":
        tok, special = byte_level_bpe_tokenizer(texts)
        names = ["input_ids", "attention_mask"]
    elif family == "xlm-roberta":
        tok, special = unigram_tokenizer(texts)
        names = ["input_ids", "attention_mask"]
    elif family == "deberta-v2":
        tok, special = unigram_tokenizer(texts, DEBERTA_SPECIALS)
        names = ["input_ids", "token_type_ids", "attention_mask"]
    else:
        raise ValueError(family)
    if family in ("roberta", "xlm-roberta"):
        ids = [tok.token_to_id(t) for t in ROBERTA_SPECIALS]
        assert ids == [0, 1, 2, 3, 4], (family, ids)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=128,
        padding_side="right",
        truncation_side="right",
        model_input_names=names,
        **special,
    )


def check_template(family, tok, question, context):
    """tok(question, context) must give the family's pair template (and tok(question) the single one)."""
    q = tok(question, add_special_tokens=False)["input_ids"]
    c = tok(context, add_special_tokens=False)["input_ids"]
    single = tok(question)
    pair = tok(question, context)
    if family in ("roberta", "xlm-roberta"):
        s, e = tok.convert_tokens_to_ids("<s>"), tok.convert_tokens_to_ids("</s>")
        assert (s, e) == (0, 2)
        assert single["input_ids"] == [s] + q + [e], family
        assert pair["input_ids"] == [s] + q + [e, e] + c + [e], family
        assert "token_type_ids" not in pair, family
        assert pair.sequence_ids() == [None] + [0] * len(q) + [None, None] + [1] * len(c) + [None]
    else:
        cls, sep = tok.convert_tokens_to_ids("[CLS]"), tok.convert_tokens_to_ids("[SEP]")
        assert single["input_ids"] == [cls] + q + [sep], family
        assert pair["input_ids"] == [cls] + q + [sep] + c + [sep], family
        if family == "distilbert":
            assert "token_type_ids" not in pair, family
        else:
            assert pair["token_type_ids"] == [0] * (len(q) + 2) + [1] * (len(c) + 1), family
        assert pair.sequence_ids() == [None] + [0] * len(q) + [None] + [1] * len(c) + [None]


# ----------------------------------------------------------------------------------------------
# Models


def build_model(family, tok, seed):
    vocab_size = len(tok)
    pad = tok.pad_token_id
    common = dict(vocab_size=vocab_size, pad_token_id=pad)
    if family == "bert":
        config = BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=128, type_vocab_size=2, **common,
        )
        cls = BertForQuestionAnswering
    elif family == "distilbert":
        config = DistilBertConfig(
            dim=32, hidden_dim=48, n_layers=2, n_heads=4, max_position_embeddings=128, **common,
        )
        cls = DistilBertForQuestionAnswering
    elif family == "electra":
        config = ElectraConfig(
            embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=128, type_vocab_size=2, **common,
        )
        cls = ElectraForQuestionAnswering
    elif family in ("roberta", "xlm-roberta"):
        config_cls = RobertaConfig if family == "roberta" else XLMRobertaConfig
        config = config_cls(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **common,
        )
        cls = RobertaForQuestionAnswering if family == "roberta" else XLMRobertaForQuestionAnswering
    elif family == "deberta-v2":
        config = DebertaV2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=128, type_vocab_size=0, position_biased_input=False,
            relative_attention=True, position_buckets=64, max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
            layer_norm_eps=1e-7, hidden_act="gelu", initializer_range=DEBERTA_INIT_RANGE, **common,
        )
        cls = DebertaV2ForQuestionAnswering
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_perturbed(name):
                p.add_(0.1 * torch.randn_like(p))
        # At initializer_range 0.02 the logits spread over about +-0.3, and n-best scores of a
        # random model then differ by 1e-7 here and there: a float rounding would reorder them.
        # A larger output layer spreads them over a few units (and keeps them below 10, so that
        # 5 decimals keep 6 significant digits).
        if family != "deberta-v2":
            model.qa_outputs.weight.mul_(QA_OUTPUT_SCALE)
        round_to_float16(model)
    model.eval()
    return model


def is_perturbed(name):
    return "LayerNorm" in name or "layer_norm" in name or name.endswith("bias")


def round_to_float16(model):
    """Rounds every parameter to the nearest float16 (the model stays float32: it computes with the
    weights model.safetensors holds as float16). A perturbed parameter (LayerNorm, bias) that rounds
    to exactly 0 or 1 is moved one float16 step away from it, towards its float32 value, so that
    none keeps an initial value even in float16."""
    for name, p in model.named_parameters():
        h = p.detach().to(torch.float16)
        if is_perturbed(name):
            for v in (0.0, 1.0):
                hit = h == v
                if bool(hit.any()):
                    towards = torch.where(p.detach() > v, v + 1.0, v - 1.0).to(torch.float16)
                    h = torch.where(hit, torch.nextafter(h, towards), h)
        p.copy_(h.to(torch.float32))
        assert torch.equal(p.to(torch.float16).to(torch.float32), p), name


def run_model(model, features, with_token_types, pad_id):
    """Logits of every feature, the model run on batches padded to MAX_SEQ_LENGTH; rows unpadded."""
    starts, ends = [], []
    for b in range(0, len(features), BATCH_SIZE):
        batch = features[b : b + BATCH_SIZE]
        n = len(batch)
        ids = torch.full((n, MAX_SEQ_LENGTH), pad_id, dtype=torch.long)
        mask = torch.zeros((n, MAX_SEQ_LENGTH), dtype=torch.long)
        types = torch.zeros((n, MAX_SEQ_LENGTH), dtype=torch.long)
        for i, f in enumerate(batch):
            L = len(f["input_ids"])
            ids[i, :L] = torch.tensor(f["input_ids"])
            mask[i, :L] = 1
            if with_token_types:
                types[i, :L] = torch.tensor(f["token_type_ids"])
        inputs = dict(input_ids=ids, attention_mask=mask)
        if with_token_types:
            inputs["token_type_ids"] = types
        with torch.no_grad():
            out = model(**inputs)
        s = out.start_logits.float().numpy()
        e = out.end_logits.float().numpy()
        for i, f in enumerate(batch):
            L = len(f["input_ids"])
            starts.append(s[i, :L].copy())
            ends.append(e[i, :L].copy())
    return starts, ends


# ----------------------------------------------------------------------------------------------
# run_qa.py's preprocessing (pad_on_right: every tokenizer here pads on the right)


def tokenize_windows(tok, examples):
    return tok(
        [ex["question"].lstrip() for ex in examples],
        [ex["context"] for ex in examples],
        truncation="only_second",
        max_length=MAX_SEQ_LENGTH,
        stride=DOC_STRIDE,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def prepare_train_features(tok, examples):
    """run_qa.py's prepare_train_features: [(example_id, start_position, end_position)]."""
    assert tok.padding_side == "right"
    tokenized = tokenize_windows(tok, examples)
    sample_mapping = tokenized["overflow_to_sample_mapping"]
    labels = []
    for i, offsets in enumerate(tokenized["offset_mapping"]):
        input_ids = tokenized["input_ids"][i]
        if tok.cls_token_id in input_ids:
            cls_index = input_ids.index(tok.cls_token_id)
        elif tok.bos_token_id in input_ids:
            cls_index = input_ids.index(tok.bos_token_id)
        else:
            cls_index = 0
        sequence_ids = tokenized.sequence_ids(i)
        example = examples[sample_mapping[i]]
        answers = example["answers"]
        if len(answers["answer_start"]) == 0:
            start_position = end_position = cls_index
        else:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            token_start_index = 0
            while sequence_ids[token_start_index] != 1:
                token_start_index += 1
            token_end_index = len(input_ids) - 1
            while sequence_ids[token_end_index] != 1:
                token_end_index -= 1
            if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
                start_position = end_position = cls_index
            else:
                # Note: run_qa can go after the last offset if the answer is the last word (edge case).
                while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                    token_start_index += 1
                start_position = token_start_index - 1
                while offsets[token_end_index][1] >= end_char:
                    token_end_index -= 1
                end_position = token_end_index + 1
        labels.append((example["id"], start_position, end_position))
    return labels


def prepare_validation_features(tok, examples):
    """run_qa.py's prepare_validation_features: feature dicts with example_id and offset_mapping."""
    tokenized = tokenize_windows(tok, examples)
    sample_mapping = tokenized["overflow_to_sample_mapping"]
    features = []
    for i in range(len(tokenized["input_ids"])):
        sequence_ids = tokenized.sequence_ids(i)
        context_index = 1
        feature = {
            "example_id": examples[sample_mapping[i]]["id"],
            "input_ids": list(tokenized["input_ids"][i]),
            "token_type_ids": list(tokenized["token_type_ids"][i]) if "token_type_ids" in tokenized else None,
            "offset_mapping": [
                (tuple(o) if sequence_ids[k] == context_index else None)
                for k, o in enumerate(tokenized["offset_mapping"][i])
            ],
        }
        features.append(feature)
    return features


# ----------------------------------------------------------------------------------------------
# utils_qa.py's postprocess_qa_predictions (version_2_with_negative False)


def postprocess_qa_predictions(examples, features, predictions, n_best_size=N_BEST_SIZE,
                               max_answer_length=MAX_ANSWER_LENGTH):
    all_start_logits, all_end_logits = predictions
    assert len(all_start_logits) == len(features)
    example_id_to_index = {ex["id"]: i for i, ex in enumerate(examples)}
    features_per_example = collections.defaultdict(list)
    for i, feature in enumerate(features):
        features_per_example[example_id_to_index[feature["example_id"]]].append(i)

    all_predictions = collections.OrderedDict()
    all_nbest = collections.OrderedDict()
    for example_index, example in enumerate(examples):
        feature_indices = features_per_example[example_index]
        min_null_prediction = None
        prelim_predictions = []
        for feature_index in feature_indices:
            start_logits = all_start_logits[feature_index]
            end_logits = all_end_logits[feature_index]
            offset_mapping = features[feature_index]["offset_mapping"]
            token_is_max_context = features[feature_index].get("token_is_max_context", None)
            feature_null_score = start_logits[0] + end_logits[0]
            if min_null_prediction is None or min_null_prediction["score"] > feature_null_score:
                min_null_prediction = {
                    "offsets": (0, 0),
                    "score": feature_null_score,
                    "start_logit": start_logits[0],
                    "end_logit": end_logits[0],
                }
            start_indexes = np.argsort(start_logits)[-1 : -n_best_size - 1 : -1].tolist()
            end_indexes = np.argsort(end_logits)[-1 : -n_best_size - 1 : -1].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    if (
                        start_index >= len(offset_mapping)
                        or end_index >= len(offset_mapping)
                        or offset_mapping[start_index] is None
                        or len(offset_mapping[start_index]) < 2
                        or offset_mapping[end_index] is None
                        or len(offset_mapping[end_index]) < 2
                    ):
                        continue
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue
                    if token_is_max_context is not None and not token_is_max_context.get(str(start_index), False):
                        continue
                    prelim_predictions.append(
                        {
                            "offsets": (offset_mapping[start_index][0], offset_mapping[end_index][1]),
                            "score": start_logits[start_index] + end_logits[end_index],
                            "start_logit": start_logits[start_index],
                            "end_logit": end_logits[end_index],
                        }
                    )
        predictions_ = sorted(prelim_predictions, key=lambda x: x["score"], reverse=True)[:n_best_size]
        context = example["context"]
        for pred in predictions_:
            offsets = pred.pop("offsets")
            pred["text"] = context[offsets[0] : offsets[1]]
        if len(predictions_) == 0 or (len(predictions_) == 1 and predictions_[0]["text"] == ""):
            predictions_.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
        scores = np.array([pred.pop("score") for pred in predictions_])
        exp_scores = np.exp(scores - np.max(scores))
        probs = exp_scores / exp_scores.sum()
        for prob, pred in zip(probs, predictions_):
            pred["probability"] = prob
        all_predictions[example["id"]] = predictions_[0]["text"]
        all_nbest[example["id"]] = predictions_
    return all_predictions, all_nbest


# ----------------------------------------------------------------------------------------------
# Output


def r6(x):
    """5 decimals (6 significant digits for the logits here, all below 10 in magnitude)."""
    return round(float(x), 5)


def dump_compact(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def select_examples(tokenizers):
    dev = squad_examples(DEV)

    def question_tokens(qa):
        q = qa["question"].lstrip()
        return max(len(t(q, add_special_tokens=False)["input_ids"]) for t in tokenizers.values())

    def short_enough(qa):
        return question_tokens(qa) <= MAX_QUERY_LENGTH

    chosen = set()
    for title, pi, n in SELECTION:
        # The n questions of the paragraph with the fewest tokens (in the family that makes the
        # most of them), ties in file order: shorter questions leave room for longer windows.
        pool = [
            (question_tokens(qa), k, qa["id"])
            for k, (ai, p, t, context, qa) in enumerate(dev)
            if t == title and p == pi and short_enough(qa)
        ]
        assert len(pool) >= n, (title, pi, len(pool))
        chosen.update(qid for _, _, qid in sorted(pool)[:n])
    for qid in EXTRA_IDS:
        row = [r for r in dev if r[4]["id"] == qid]
        assert row and short_enough(row[0][4]), qid
        chosen.add(qid)
    quirk = None
    for ai, p, t, context, qa in dev:
        if qa["id"] in chosen or not short_enough(qa):
            continue
        ex = as_example(context, qa)
        for fam, tok in tokenizers.items():
            if any(s > e for _, s, e in prepare_train_features(tok, [ex])):
                quirk = (qa["id"], fam)
                break
        if quirk:
            chosen.add(qa["id"])
            break
    rows = [r for r in dev if r[4]["id"] in chosen]  # in dev.json's order
    return rows, quirk


def as_example(context, qa):
    return {
        "id": qa["id"],
        "question": qa["question"],
        "context": context,
        "answers": {
            "text": [a["text"] for a in qa["answers"]],
            "answer_start": [a["answer_start"] for a in qa["answers"]],
        },
    }


def questions_json(rows):
    data = []
    for ai, pi, title, context, qa in rows:
        if not data or data[-1]["title"] != title:
            data.append({"title": title, "paragraphs": []})
        paragraphs = data[-1]["paragraphs"]
        if not paragraphs or paragraphs[-1]["context"] != context:
            paragraphs.append({"context": context, "qas": []})
        paragraphs[-1]["qas"].append(qa)
    return {"version": "1.1", "data": data}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default=str(REPO / "tests/fixtures/families"))
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    texts = training_texts()
    tokenizers = {}
    for family in FAMILIES:
        d = out / family
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        tok = build_tokenizer(family, texts)
        tok.save_pretrained(d)
        # Everything below uses the tokenizer as AutoTokenizer loads it back.
        tokenizers[family] = AutoTokenizer.from_pretrained(d)
        assert tokenizers[family].is_fast
        assert tokenizers[family].get_vocab() == tok.get_vocab()

    rows, quirk = select_examples(tokenizers)
    text = json.dumps(questions_json(rows), ensure_ascii=False, indent=1)
    (out / "questions.json").write_text(text + "\n", encoding="utf-8")
    examples = [as_example(context, qa) for _, _, _, context, qa in rows]
    print(f"{len(examples)} questions from {len({r[3] for r in rows})} contexts; quirk case: {quirk}")

    summary = {}
    for family in FAMILIES:
        d = out / family
        tok = tokenizers[family]
        ex0 = examples[0]
        check_template(family, tok, ex0["question"].lstrip(), ex0["context"])

        model = build_model(family, tok, SEEDS[family])
        # Stored as float16 (exactly the values model holds, see round_to_float16); transformers
        # then writes "dtype": "float16" in config.json.
        model.to(torch.float16).save_pretrained(d)
        model.to(torch.float32)
        for name in os.listdir(d):
            if name not in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                            "special_tokens_map.json", "generation_config.json"):
                raise SystemExit(f"unexpected file {d / name}")
        gen = d / "generation_config.json"
        if gen.exists():
            gen.unlink()

        features = prepare_validation_features(tok, examples)
        labels = prepare_train_features(tok, examples)
        assert len(labels) == len(features)
        # Some answer lies in a window other than its example's first (the CLS / <s> index is 0).
        first_feature = {}
        later_window_labels = sum(
            1 for k, (qid, s, e) in enumerate(labels) if first_feature.setdefault(qid, k) != k and s > 0
        )
        assert later_window_labels > 0, family
        with_types = features[0]["token_type_ids"] is not None
        starts, ends = run_model(model, features, with_types, tok.pad_token_id)
        assert max(float(np.abs(x).max()) for x in starts + ends) < 10, family
        # What was written is what was run (float16 weights, read back as float32), and no
        # parameter kept its initial 0 or 1.
        stored = load_file(d / "model.safetensors")
        assert stored and all(t.dtype == torch.float16 for t in stored.values()), family
        reloaded = AutoModelForQuestionAnswering.from_pretrained(d, dtype=torch.float32).eval()
        assert type(reloaded) is type(model) and reloaded.dtype == torch.float32
        for name, p in reloaded.named_parameters():
            if is_perturbed(name):
                assert not torch.any((p == 0) | (p == 1)), name
        r_s, r_e = run_model(reloaded, features, with_types, tok.pad_token_id)
        assert all(np.array_equal(a, b) for a, b in zip(r_s + r_e, starts + ends)), family

        predictions, nbest = postprocess_qa_predictions(examples, features, (starts, ends))
        # The rounded logits (what the fixture holds) must decode to the same answers.
        r_starts = [np.array([r6(x) for x in s], dtype=np.float32) for s in starts]
        r_ends = [np.array([r6(x) for x in e], dtype=np.float32) for e in ends]
        r_predictions, r_nbest = postprocess_qa_predictions(examples, features, (r_starts, r_ends))
        assert r_predictions == predictions, family
        for qid in nbest:
            a = [(p["text"], p["start_logit"] + p["end_logit"]) for p in nbest[qid]]
            b = [(p["text"], p["start_logit"] + p["end_logit"]) for p in r_nbest[qid]]
            if [t for t, _ in a] != [t for t, _ in b]:
                k = next(i for i, (x, y) in enumerate(zip(a, b)) if x[0] != y[0])
                print(f"  {family} {qid}: n-best order differs from rank {k} on rounded logits: "
                      f"{a[k - 1:k + 2]} vs {b[k - 1:k + 2]}")
                assert k >= NBEST_KEPT, "a near tie inside the kept n-best"

        expected = {
            "family": family,
            "model_type": model.config.model_type,
            "window": {"max_seq_length": MAX_SEQ_LENGTH, "doc_stride": DOC_STRIDE,
                       "max_query_length": MAX_QUERY_LENGTH},
            "features": [
                {
                    "example_id": f["example_id"],
                    "input_ids": f["input_ids"],
                    "token_type_ids": f["token_type_ids"],
                    "offsets": [list(o) if o is not None else None for o in f["offset_mapping"]],
                    "start_logits": [r6(x) for x in s],
                    "end_logits": [r6(x) for x in e],
                }
                for f, s, e in zip(features, starts, ends)
            ],
            "train_labels": [
                {"example_id": qid, "start_position": s, "end_position": e} for qid, s, e in labels
            ],
            "predictions": dict(predictions),
            "nbest": {
                qid: [
                    {"text": p["text"], "start_logit": r6(p["start_logit"]), "end_logit": r6(p["end_logit"])}
                    for p in preds[:NBEST_KEPT]
                ]
                for qid, preds in nbest.items()
            },
        }
        dump_compact(expected, d / "expected.json")
        # How far apart the decisions are: the best answer's score from the next one's, and the
        # closest two consecutive scores among the n-best entries written.
        margins = []
        for preds in nbest.values():
            scores = [float(p["start_logit"]) + float(p["end_logit"]) for p in preds[:NBEST_KEPT]]
            margins.append(min(a - b for a, b in zip(scores, scores[1:])) if len(scores) > 1 else float("inf"))
        top_margin = min(
            float(p[0]["start_logit"] + p[0]["end_logit"] - p[1]["start_logit"] - p[1]["end_logit"])
            for p in nbest.values()
            if len(p) > 1
        )
        summary[family] = dict(
            top1_margin=round(top_margin, 6),
            nbest_margin=round(min(margins), 6),
            vocab=len(tok),
            features=len(features),
            questions=len(examples),
            later_window_labels=later_window_labels,
            quirk_labels=sum(1 for _, s, e in labels if s > e),
            cls_labels=sum(1 for _, s, e in labels if s == e == 0),
        )

    for family, s in summary.items():
        print(family, s)
    total = 0
    for p in sorted(out.rglob("*")):
        if p.is_file():
            size = p.stat().st_size
            total += size
            print(f"{size:>9}  {hashlib.sha256(p.read_bytes()).hexdigest()[:12]}  {p.relative_to(out)}")
    print(f"{total:>9}  total")


if __name__ == "__main__":
    sys.exit(main())
