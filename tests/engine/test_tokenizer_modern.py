"""Tokenizers of today's checkpoints (Llama 3 byte-level BPE, Llama 2 / Gemma SentencePiece-style BPE with
byte fallback, Qwen byte-level without BOS): ids, text and special tokens equal transformers' AutoTokenizer
on the same folder; display strings stay readable."""

from __future__ import annotations

import json
import re

import pytest
from transformers import AutoTokenizer

from engine.tokenizer import NEWLINE, SPACE, TAB, Tokenizer
from tests import chat_factories as cf
from tests.factories import byte_level_tokenizer

STYLES = ["llama3", "llama2", "gemma2", "qwen2.5", "qwen3", "phi3"]
TEXTS = [
    "Hello world",
    " leading space",
    "  two spaces and trailing  ",
    "line one\nline two\n\n",
    "tabs\tand\ttabs",
    "café naïve résumé Ångström",
    "emoji 🙂👍🏽 done 🇫🇷",
    "数字 and 日本語",
    "<|im_end|> <end_of_turn> <s> <bos> <|eot_id|> written in the text",
    "x",
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    out = {}
    for name in STYLES:
        folder = cf.STYLES[name](root / name)
        out[name] = (Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder))
    return out


@pytest.mark.parametrize("style", STYLES)
def test_encode_equals_transformers(pairs, style):
    ours, hf = pairs[style]
    for text in TEXTS:
        assert ours.encode(text) == hf.encode(text), text
        assert ours.encode(text, special_tokens=False) == hf.encode(text, add_special_tokens=False), text


@pytest.mark.parametrize("style", STYLES)
def test_decode_equals_transformers(pairs, style):
    ours, hf = pairs[style]
    for text in TEXTS:
        ids = hf.encode(text)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), (text, skip)


@pytest.mark.parametrize("style, bos", [("llama3", "<|begin_of_text|>"), ("llama2", "<s>"), ("gemma2", "<bos>"),
                                        ("qwen2.5", None), ("qwen3", None), ("phi3", None)])
def test_bos_as_the_folder_says(pairs, style, bos):
    ours, hf = pairs[style]
    ids = ours.encode("Hello world")
    if bos is None:
        assert not any(ours.is_special(i) for i in ids)
    else:
        assert ids[0] == ours.token_to_id(bos) and ids.count(ids[0]) == 1
    assert ids == hf.encode("Hello world")


def _text_of(displays: list[str]) -> str:
    """Undo the display marks: ␣ ↵ ⇥ back to whitespace, <0xNN> back to bytes."""
    out = bytearray()
    for d in displays:
        for piece in re.split(r"(<0x[0-9A-F]{2}>)", d.replace(SPACE, " ").replace(NEWLINE, "\n").replace(TAB, "\t")):
            out += bytes([int(piece[3:5], 16)]) if re.fullmatch(r"<0x[0-9A-F]{2}>", piece) else piece.encode("utf-8")
    return out.decode("utf-8")


@pytest.mark.parametrize("style", STYLES)
def test_display_strings_readable_and_exact(pairs, style):
    ours, hf = pairs[style]
    for text in TEXTS:
        ids = ours.encode(text)
        shown = ours.token_strings(ids)
        plain = [s for i, s in zip(ids, shown) if not ours.is_special(i)]
        assert not any(c in s for s in plain for c in "▁Ġ \n\t"), shown  # no raw pieces, no invisible whitespace
        if ours.byte_level:
            expected = hf.decode(ids, skip_special_tokens=False)
        else:  # SentencePiece-style: the pieces themselves, ▁ read as a space, byte pieces fused
            expected = _text_of([t.replace("▁", " ") for t in hf.convert_ids_to_tokens(ids)])
        assert _text_of(shown) == expected, (text, shown)


def test_sentencepiece_pieces_show_space_marks_and_byte_tokens(pairs):
    ours, _ = pairs["llama2"]
    shown = ours.token_strings(ours.encode("Hello 🙂", special_tokens=False))
    assert shown[0].startswith(SPACE)  # the ▁ prefix Llama 2 puts before the first word
    assert [s for s in shown if s.startswith("<0x")] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    assert ours.metaspace and not ours.byte_level
    gemma, _ = pairs["gemma2"]
    assert gemma.token_strings(gemma.encode("a\nb", special_tokens=False)) == ["a", NEWLINE, "b"]


def test_named_special_tokens_are_special(pairs):
    ours, hf = pairs["gemma2"]
    for name in ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>"):
        assert ours.is_special(ours.token_to_id(name)), name
    assert set(hf.all_special_ids) <= ours.special_ids


def _rewrite(folder, tokenizer=None, config=None):
    if tokenizer is not None:
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        tokenizer(spec)
        (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    if config is not None:
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        cfg.update(config)
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")


@pytest.mark.parametrize("style, add_bos, post_processor", [
    ("llama2", True, None),  # config asks for BOS, tokenizer.json has no post-processor: no BOS (transformers 5)
    ("llama3", False, "keep"),  # config says no BOS, tokenizer.json's post-processor adds it: BOS
    ("gemma2", False, "keep"),
])
def test_add_bos_token_with_tokenizer_json(tmp_path, style, add_bos, post_processor):
    folder = cf.STYLES[style](tmp_path / style)

    def drop(spec):
        spec["post_processor"] = None

    _rewrite(folder, None if post_processor == "keep" else drop, {"add_bos_token": add_bos, "add_eos_token": False})
    ours, hf = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    for text in TEXTS[:4]:
        assert ours.encode(text) == hf.encode(text), text
    assert ours.is_special(ours.encode("Hello")[0]) == (post_processor == "keep")


@pytest.mark.parametrize("add_bos, add_eos", [(True, False), (False, True), (True, True), (False, False)])
def test_add_bos_eos_without_tokenizer_json(tmp_path, add_bos, add_eos):
    """GPT-2 style vocab.json + merges.txt: transformers honours add_bos_token / add_eos_token."""
    tok = byte_level_tokenizer(300, ["<|endoftext|>"])
    tok.model.save(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "add_bos_token": add_bos, "add_eos_token": add_eos,
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}), encoding="utf-8")
    ours, hf = Tokenizer.from_folder(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS[:6]:
        assert ours.encode(text) == hf.encode(text), text
        assert ours.encode(text, special_tokens=False) == hf.encode(text, add_special_tokens=False), text


@pytest.mark.parametrize("model_type", ["llama", "mistral", "phi3"])
@pytest.mark.parametrize("options", [{}, {"legacy": False}, {"legacy": True}, {"add_prefix_space": False}])
def test_older_llama_files_read_as_transformers_reads_them(tmp_path, model_type, options):
    """Llama 2 era tokenizer.json files (a Prepend + Replace normalizer, no pre-tokenizer) labelled
    LlamaTokenizer: transformers rebuilds the pipeline for model_type llama, keeps the file for others."""
    folder = cf.llama2(tmp_path / "l")

    def older(spec):
        spec["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                                  {"type": "Replace", "pattern": {"String": " "},
                                                                   "content": "▁"}]}
        spec["pre_tokenizer"] = None

    _rewrite(folder, older, {"tokenizer_class": "LlamaTokenizerFast", "legacy": None, **options})
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
    ours, hf = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": " Hello there"}, {"role": "assistant", "content": "Hi </s> x"},
                {"role": "user", "content": "again\n\ttab"}]
    for text in TEXTS + ["a<s>b c", ours.render_chat(messages)]:
        ids = hf.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.encode(text, special_tokens=False) == hf.encode(text, add_special_tokens=False), text
        assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False), text
    assert ours.apply_chat_template(messages) == hf.apply_chat_template(messages, add_generation_prompt=True,
                                                                        return_dict=False)


@pytest.mark.parametrize("split", [True, False])
def test_split_special_tokens(tmp_path, split):
    folder = cf.qwen(tmp_path / "q")
    _rewrite(folder, config={"split_special_tokens": split})
    ours, hf = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    text = "a <|im_end|> b <think>"
    assert ours.encode(text) == hf.encode(text)
    assert (ours.token_to_id("<|im_end|>") in ours.encode(text)) != split
    messages = [{"role": "user", "content": "Hi"}]
    assert ours.apply_chat_template(messages) == hf.apply_chat_template(messages, add_generation_prompt=True,
                                                                        return_dict=False)
