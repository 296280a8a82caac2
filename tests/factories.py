"""Tiny random Hugging Face checkpoints built offline from config objects, for parity and loader tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "The quick brown fox jumps over the lazy dog on 12 March 2024, a Tuesday.",
    "Attention is all you need; heads attend to previous tokens and copy them.",
] * 4


def byte_level_tokenizer(vocab_size: int, specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def wordpiece_tokenizer(vocab_size: int) -> Tokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                              show_progress=False))
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    return tok


def eos_tokenizer(vocab_size: int, specials: list[str], eos: str) -> Tokenizer:
    """Metaspace BPE that appends EOS to every encoded text (as T5 / Marian tokenizers do)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))])
    return tok


def _save(model, tok: Tokenizer, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _init(model, seed: int):
    """Random weights with enough spread that patterns and logits are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif "norm" in name.lower() and "weight" in name:
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def gpt2(folder: Path, **overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = byte_level_tokenizer(300, ["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=eos, eos_token_id=eos, attn_implementation="eager", **overrides)
    return _save(_init(GPT2LMHeadModel(cfg), 1), tok, folder)


def bert(folder: Path, head: bool = True, **overrides):
    from transformers import BertConfig, BertForMaskedLM, BertModel

    tok = wordpiece_tokenizer(200)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=0, attn_implementation="eager",
                     **overrides)
    model = BertForMaskedLM(cfg) if head else BertModel(cfg, add_pooling_layer=True)
    return _save(_init(model, 2), tok, folder)


def roberta(folder: Path, **overrides):
    from transformers import RobertaConfig, RobertaForMaskedLM

    tok = byte_level_tokenizer(300, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    cfg = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2, type_vocab_size=1, attn_implementation="eager", **overrides)
    return _save(_init(RobertaForMaskedLM(cfg), 3), tok, folder)


def t5(folder: Path, v11: bool = False, **overrides):
    from transformers import T5Config, T5ForConditionalGeneration

    tok = eos_tokenizer(250, ["<pad>", "</s>", "<unk>"], "</s>")
    kw = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False) if v11 else dict(feed_forward_proj="relu")
    cfg = T5Config(vocab_size=tok.get_vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, attn_implementation="eager",
                   **{**kw, **overrides})
    return _save(_init(T5ForConditionalGeneration(cfg), 4), tok, folder)


def bart(folder: Path, **overrides):
    from transformers import BartConfig, BartForConditionalGeneration

    tok = eos_tokenizer(250, ["<s>", "<pad>", "</s>", "<unk>"], "</s>")
    cfg = BartConfig(vocab_size=tok.get_vocab_size(), d_model=32, encoder_layers=2, decoder_layers=2,
                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                     max_position_embeddings=64, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                     decoder_start_token_id=2, forced_eos_token_id=None, forced_bos_token_id=None,
                     attn_implementation="eager", **overrides)
    return _save(_init(BartForConditionalGeneration(cfg), 5), tok, folder)


def marian(folder: Path, **overrides):
    from transformers import MarianConfig, MarianMTModel

    tok = eos_tokenizer(250, ["</s>", "<unk>", "<pad>"], "</s>")
    pad = tok.token_to_id("<pad>")
    cfg = MarianConfig(vocab_size=tok.get_vocab_size(), d_model=32, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                       max_position_embeddings=64, pad_token_id=pad, eos_token_id=0, decoder_start_token_id=pad,
                       forced_eos_token_id=None, attn_implementation="eager", **overrides)
    return _save(_init(MarianMTModel(cfg), 6), tok, folder)


ARCHITECTURES = {
    "gpt2": gpt2,
    "bert": bert,
    "bert-no-head": lambda f: bert(f, head=False),
    "roberta": roberta,
    "roberta-gelu-new": lambda f: roberta(f, hidden_act="gelu_new"),  # its masked-LM head still uses gelu
    "t5-v1.0": t5,
    "t5-v1.1": lambda f: t5(f, v11=True),
    "bart": bart,
    "marian": marian,
    "transformer": lambda f: marian(f, activation_function="relu"),
}
