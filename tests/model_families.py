"""Tiny randomly initialised encoders of each supported family, saved as local Hugging Face directories.

Each directory holds what a downloaded checkpoint holds: `config.json`, safetensors weights (the bare
encoder, no classification head, like a pretrained checkpoint) and a tokenizer trained here with the
`tokenizers` library (WordPiece, byte-level BPE or Unigram, as the family ships), with the family's
special tokens. Nothing is downloaded; a family builds in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

POSITIONS = 128
VOCAB = 400


@dataclass(frozen=True)
class Shape:
    """A model's size. The default (hidden 32, 2 layers, 2 heads) trains in seconds on the synthetic corpus,
    yet runs every code path of a real model; bench/families.py builds larger ones."""

    hidden: int = 32
    layers: int = 2
    heads: int = 2
    intermediate: int = 64
    positions: int = POSITIONS
    vocab: int = VOCAB


TINY = Shape()
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
DEBERTA_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]


@dataclass(frozen=True)
class FamilySpec:
    name: str  # the model_type
    tokenizer: str  # wordpiece | bpe | unigram
    specials: Sequence[str]
    style: str  # bert ([CLS] x [SEP]) | roberta (<s> x </s>)
    build: Callable[[dict[str, int], Shape], Any]  # special token ids, size -> a randomly initialised base model
    token_types: bool = False  # the released tokenizers return token_type_ids (BERT, ELECTRA, DeBERTa)


def _bert(ids: dict[str, int], shape: Shape):
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                                num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                                max_position_embeddings=shape.positions, pad_token_id=ids["pad"]),
                     add_pooling_layer=False)


def _distilbert(ids: dict[str, int], shape: Shape):
    from transformers import DistilBertConfig, DistilBertModel

    return DistilBertModel(DistilBertConfig(vocab_size=shape.vocab, dim=shape.hidden, n_layers=shape.layers,
                                            n_heads=shape.heads, hidden_dim=shape.intermediate,
                                            max_position_embeddings=shape.positions, pad_token_id=ids["pad"]))


def _roberta_config(config_class, ids: dict[str, int], shape: Shape):
    # RoBERTa positions start after padding_idx (= pad_token_id): 128 usable positions need 128 + pad + 1.
    return config_class(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                        num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                        max_position_embeddings=shape.positions + ids["pad"] + 1, type_vocab_size=1,
                        pad_token_id=ids["pad"], bos_token_id=ids["cls"], eos_token_id=ids["sep"])


def _roberta(ids: dict[str, int], shape: Shape):
    from transformers import RobertaConfig, RobertaModel

    return RobertaModel(_roberta_config(RobertaConfig, ids, shape), add_pooling_layer=False)


def _xlm_roberta(ids: dict[str, int], shape: Shape):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    return XLMRobertaModel(_roberta_config(XLMRobertaConfig, ids, shape), add_pooling_layer=False)


def _deberta_v3(ids: dict[str, int], shape: Shape):
    from transformers import DebertaV2Config, DebertaV2Model

    # DeBERTa-v3's settings: relative attention with position buckets, no absolute positions, no token types.
    return DebertaV2Model(DebertaV2Config(
        vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, intermediate_size=shape.intermediate, max_position_embeddings=shape.positions,
        type_vocab_size=0, relative_attention=True, position_buckets=32, norm_rel_ebd="layer_norm",
        pos_att_type=["p2c", "c2p"], position_biased_input=False, max_relative_positions=-1, pad_token_id=ids["pad"]))


def _electra(ids: dict[str, int], shape: Shape):
    from transformers import ElectraConfig, ElectraModel

    # embedding_size != hidden_size, as in the released discriminators: the embeddings are projected.
    return ElectraModel(ElectraConfig(vocab_size=shape.vocab, embedding_size=max(16, shape.hidden // 2),
                                      hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                                      num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                                      max_position_embeddings=shape.positions, pad_token_id=ids["pad"]))


def _modernbert(ids: dict[str, int], shape: Shape):
    from transformers import ModernBertConfig, ModernBertModel

    # At least 3 layers, a global one every 3rd: both sliding-window and global attention are exercised.
    return ModernBertModel(ModernBertConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=max(3, shape.layers),
        num_attention_heads=shape.heads, intermediate_size=shape.intermediate, max_position_embeddings=shape.positions,
        global_attn_every_n_layers=3, local_attention=16, pad_token_id=ids["pad"], cls_token_id=ids["cls"],
        sep_token_id=ids["sep"], bos_token_id=ids["cls"], eos_token_id=ids["sep"]))


FAMILIES: dict[str, FamilySpec] = {spec.name: spec for spec in (
    FamilySpec("bert", "wordpiece", BERT_SPECIALS, "bert", _bert, token_types=True),
    FamilySpec("distilbert", "wordpiece", BERT_SPECIALS, "bert", _distilbert),
    FamilySpec("roberta", "bpe", ROBERTA_SPECIALS, "roberta", _roberta),
    FamilySpec("xlm-roberta", "unigram", ROBERTA_SPECIALS, "roberta", _xlm_roberta),
    FamilySpec("deberta-v2", "unigram", DEBERTA_SPECIALS, "bert", _deberta_v3, token_types=True),
    FamilySpec("electra", "wordpiece", BERT_SPECIALS, "bert", _electra, token_types=True),
    FamilySpec("modernbert", "bpe", BERT_SPECIALS, "bert", _modernbert),
)}


def train_tokenizer(kind: str, specials: Sequence[str], style: str, texts: Iterable[str], vocab_size: int = VOCAB):
    """A `tokenizers` tokenizer trained on `texts`, with the family's template ([CLS] x [SEP] or <s> x </s>)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    unk = next(token for token in specials if "unk" in token.lower())
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer: Any = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(specials))
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(specials), unk_token=unk)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    tokenizer.train_from_iterator(list(texts), trainer)
    cls, sep = ("[CLS]", "[SEP]") if style == "bert" else ("<s>", "</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))])
    return tokenizer


def wrap_tokenizer(tokenizer, style: str, *, pad: bool = True, model_max_length: int = POSITIONS,
                   token_types: bool = False):
    """A transformers tokenizer over a trained `tokenizers` one, with named special tokens."""
    from transformers import PreTrainedTokenizerFast

    names = ({"cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]", "mask_token": "[MASK]",
              "pad_token": "[PAD]"} if style == "bert" else
             {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>", "unk_token": "<unk>",
              "mask_token": "<mask>", "pad_token": "<pad>"})
    if not pad:
        names.pop("pad_token")
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if token_types else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length,
                                   model_input_names=inputs, **names)


def corpus_texts() -> list[str]:
    from tests.corpus_support import synthetic_corpus

    labels = ["alpha", "beta", "gamma", "delta", "billing", "bug", "praise"]
    return [row["text"] for row in synthetic_corpus(800, labels, seed=11)] + [
        "a sample text to classify", "another one", "an example text to trace", "short"]


def build_family_dir(family: str, directory: Path, texts: Sequence[str] | None = None, shape: Shape = TINY) -> Path:
    """Save a randomly initialised `family` encoder (tiny unless `shape` says) and its tokenizer; returns it."""
    spec = FAMILIES[family]
    tokenizer = wrap_tokenizer(train_tokenizer(spec.tokenizer, spec.specials, spec.style, texts or corpus_texts(),
                                               shape.vocab), spec.style, token_types=spec.token_types,
                               model_max_length=shape.positions)
    ids = {"pad": tokenizer.pad_token_id, "cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id}
    torch.manual_seed(0)
    model = spec.build(ids, shape)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_decoder_without_pad(directory: Path) -> Path:
    """A tiny GPT-2 whose tokenizer has no pad token (as the released GPT-2 tokenizers have none)."""
    from transformers import GPT2Config, GPT2Model

    tokenizer = wrap_tokenizer(train_tokenizer("bpe", ROBERTA_SPECIALS, "roberta", corpus_texts()), "roberta",
                               pad=False)
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=VOCAB, n_embd=TINY.hidden, n_layer=TINY.layers, n_head=TINY.heads,
                                 n_positions=POSITIONS, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_headless_architecture(directory: Path) -> Path:
    """A tiny Marian translation model: an architecture with no sequence-classification head."""
    from transformers import MarianConfig, MarianModel

    spec = FAMILIES["bert"]
    tokenizer = wrap_tokenizer(train_tokenizer(spec.tokenizer, spec.specials, spec.style, corpus_texts()), "bert")
    torch.manual_seed(0)
    MarianModel(MarianConfig(vocab_size=VOCAB, d_model=TINY.hidden, encoder_layers=1, decoder_layers=1,
                             encoder_attention_heads=TINY.heads, decoder_attention_heads=TINY.heads,
                             encoder_ffn_dim=TINY.intermediate, decoder_ffn_dim=TINY.intermediate,
                             max_position_embeddings=POSITIONS,
                             pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                             )).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
