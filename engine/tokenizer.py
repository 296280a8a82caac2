"""Tokenizer: a `tokenizers.Tokenizer` with readable display strings, the model's special tokens and, for
instruction-tuned checkpoints, its chat template."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as RustTokenizer

from . import chat
from .errors import ChatTemplateError, PromptError, TokenizerError
from .rust import guarded

log = logging.getLogger(__name__)

SPACE, NEWLINE, TAB = "␣", "↵", "⇥"


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character -> the byte it encodes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_MARKS = {" ": SPACE, "\n": NEWLINE, "\t": TAB}


def _visible(text: str) -> str:
    """Whitespace as visible marks; other unprintable characters as <0xNN> (a control byte draws as nothing)."""
    return "".join(_MARKS.get(c) or (c if c.isprintable() else f"<0x{ord(c):02X}>") for c in text)


class Tokenizer:
    """`config` is tokenizer_config.json (special token names, chat template); `chat_templates` the folder's
    templates by name ("default" is the one used)."""

    def __init__(self, rust: RustTokenizer, source: str = "", config: Mapping[str, Any] | None = None,
                 chat_templates: Mapping[str, str] | None = None) -> None:
        rust.no_padding()  # some tokenizer.json files pad every input to 128
        rust.no_truncation()
        self._tok = rust
        self.source = source
        self.config = dict(config or {})
        self.special_tokens = chat.special_token_strings(self.config)  # bos_token, eos_token, ... -> text
        self.chat_templates = dict(chat_templates or {})
        self._mark_named_specials()
        # transformers: split_special_tokens=True encodes "<|im_end|>" written in a text as plain text
        rust.encode_special_tokens = bool(self.config.get("split_special_tokens", False))
        spec = json.loads(rust.to_str())
        decoder = spec.get("decoder") or {}
        pre = json.dumps(spec.get("pre_tokenizer") or {})
        self.byte_level = decoder.get("type") == "ByteLevel" or '"ByteLevel"' in pre
        # SentencePiece-style pieces carry "▁" for a space: a Metaspace pre-tokenizer / decoder, or (Llama 2,
        # Gemma) a normalizer that writes it and a decoder that replaces it back
        sp = json.dumps([decoder, spec.get("pre_tokenizer"), spec.get("normalizer")], ensure_ascii=False)
        self.metaspace = '"Metaspace"' in sp or "▁" in sp
        self.special_ids = frozenset(i for i, t in rust.get_added_tokens_decoder().items() if t.special)

    def _mark_named_specials(self) -> None:
        """transformers registers the tokens tokenizer_config.json names (bos, eos, pad, extra special tokens)
        as special added tokens; do the same, for those the vocabulary has, so skip_special_tokens agrees."""
        extra = self.config.get("extra_special_tokens", self.config.get("additional_special_tokens"))
        names = list(self.special_tokens.values())
        if isinstance(extra, Sequence) and not isinstance(extra, str):
            names += [t for t in (chat._token_text(v) for v in extra) if t is not None]
        added = self._tok.get_added_tokens_decoder()
        special = {t.content for t in added.values() if t.special}
        new = [t for t in dict.fromkeys(names) if t not in special and self._tok.token_to_id(t) is not None]
        if new:
            self._tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in new])

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: Path) -> Tokenizer:
        folder = Path(folder)
        config = read_tokenizer_config(folder)
        templates = chat.read_templates(folder, config)
        path = folder / "tokenizer.json"
        if path.is_file():
            # tokenizer.json's post-processor decides BOS / EOS: transformers 5 drops tokenizer_config.json's
            # add_bos_token / add_eos_token whenever tokenizer.json exists (tokenization_utils_base._from_pretrained)
            rust = guarded(lambda: RustTokenizer.from_file(str(path)), TokenizerError,
                           f"{path} is not a valid tokenizer.json (re-save it with the tokenizers library)")
            _as_llama_tokenizer_builds(rust, config, _model_type(folder))
            return cls(rust, str(path), config, templates)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            rust = guarded(lambda: _byte_level_bpe(folder, config), TokenizerError,
                           f"cannot read the GPT-2 style vocab.json + merges.txt in {folder}")
            return cls(rust, str(folder / "vocab.json"), config, templates)
        if (folder / "vocab.txt").is_file():
            return cls(guarded(lambda: _wordpiece(folder), TokenizerError,
                               f"cannot read the BERT style vocab.txt in {folder}"), str(folder / "vocab.txt"),
                       config, templates)
        spm = sorted(p.name for p in folder.glob("*.model")) + sorted(p.name for p in folder.glob("*.spm"))
        hint = (f" It has SentencePiece files ({', '.join(spm)}): save a tokenizer.json once with "
                "`transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(folder)`.") if spm else ""
        raise TokenizerError(f"no tokenizer in {folder}: expected tokenizer.json, vocab.json + merges.txt, or vocab.txt.{hint}")

    # -- ids <-> text ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def max_id(self) -> int:
        vocab = self._tok.get_vocab(with_added_tokens=True)
        return max(vocab.values()) if vocab else -1

    def encode(self, text: str, special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise PromptError(f"a prompt must be text or a list of token ids, not {type(text).__name__}")
        enc = guarded(lambda: self._tok.encode(text, add_special_tokens=special_tokens), PromptError,
                      "the tokenizer could not encode this text")
        return list(enc.ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return guarded(lambda: self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens), PromptError,
                       "the tokenizer could not decode these ids")

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def token_strings(self, ids: list[int]) -> list[str]:
        """Readable display strings: spaces as ␣, newlines as ↵, WordPiece ## kept, bytes decoded."""
        return [self.display(i) for i in ids]

    def display(self, i: int) -> str:
        raw = self._tok.id_to_token(int(i)) if 0 <= int(i) < 2**32 else None
        if raw is None:
            return f"<{i}>"
        if int(i) in self.special_ids:
            return raw
        if self.byte_level:
            table = _byte_decoder()
            if all(c in table for c in raw):
                data = bytes(table[c] for c in raw)
                try:
                    return _visible(data.decode("utf-8"))
                except UnicodeDecodeError:  # a piece of a multi-byte character
                    return "".join(_visible(chr(b)) if b < 128 else f"<0x{b:02X}>" for b in data)
        if self.metaspace:
            raw = raw.replace("▁", " ")
        return _visible(raw)

    def is_special(self, i: int) -> bool:
        return int(i) in self.special_ids

    # -- chat ---------------------------------------------------------------------------------
    @property
    def _folder(self) -> str:
        return str(Path(self.source).parent) if self.source else "this model"

    @property
    def chat_template(self) -> str | None:
        """The template chat mode renders with ("default" of the folder's templates), None without one."""
        return self.chat_templates.get("default")

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    template: str | None = None, **kwargs: Any) -> str:
        """The text the chat template renders for `messages` (as transformers' apply_chat_template with
        tokenize=False). `template`: a name among chat_templates or a template text; `kwargs`: extra template
        variables such as enable_thinking=False."""
        if template is None:
            text = self.chat_template
            if text is None:
                names = f" (it has templates named {', '.join(sorted(self.chat_templates))}; pick one)" if self.chat_templates else ""
                raise ChatTemplateError(f"the tokenizer in {self._folder} has no default chat template{names}; "
                                        "type a plain prompt instead")
        else:
            text = self.chat_templates.get(template, template)
        return chat.render(text, messages, self.special_tokens, add_generation_prompt,
                           source=f"the chat template in {self._folder}", **kwargs)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = True, template: str | None = None, **kwargs: Any) -> list[int] | str:
        """Rendered text (tokenize=False) or its ids: encoded without adding special tokens, because the
        template writes them itself (a BOS must not be doubled)."""
        text = self.render_chat(messages, add_generation_prompt, template, **kwargs)
        return self.encode(text, special_tokens=False) if tokenize else text

    def end_of_turn_ids(self) -> tuple[int, ...]:
        """Ids of the end-of-turn tokens the chat template writes (<|eot_id|>, <|im_end|>, <end_of_turn>, ...)."""
        ids = (self._tok.token_to_id(t) for t in chat.end_of_turn_tokens(self.chat_template))
        return tuple(i for i in ids if i is not None)


# model_types whose own tokenizer class transformers' AutoTokenizer uses even when tokenizer_config.json names
# LlamaTokenizer (tokenization_auto: TOKENIZER_MAPPING_NAMES, MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS); they
# keep tokenizer.json's pipeline (or rebuild one equal to it)
_OWN_TOKENIZER_CLASS = frozenset({"mistral", "mixtral", "ministral", "phi3", "olmo2", "qwen2", "qwen3", "gemma",
                                  "gemma2", "gemma3", "gemma3_text"})


def _model_type(folder: Path) -> str | None:
    try:
        value = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _as_llama_tokenizer_builds(rust: RustTokenizer, config: Mapping[str, Any], model_type: str | None) -> None:
    """transformers 5's LlamaTokenizer (Llama 2, TinyLlama, Vicuna ... folders) keeps only tokenizer.json's
    vocabulary, merges and post-processor and rebuilds the rest in code: no normalizer, a Metaspace
    pre-tokenizer (prefix "▁" on the first piece only unless legacy), a ▁ -> space, byte-fallback decoder.
    The older files' Prepend + Replace normalizer encodes differently (a "▁" after every special token,
    "▁▁" before a leading space), so do as transformers does for the same folder."""
    name = config.get("tokenizer_class")
    if not isinstance(name, str) or name.removesuffix("Fast") != "LlamaTokenizer" or model_type in _OWN_TOKENIZER_CLASS:
        return
    spec = json.loads(rust.to_str())
    if '"ByteLevel"' in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")]):
        return  # Llama 3 style files labelled LlamaTokenizer: transformers uses the file as it is
    prefix = config.get("add_prefix_space")
    prefix = True if prefix is None else bool(prefix)
    scheme = ("always" if config.get("legacy", False) else "first") if prefix else "never"
    rust.normalizer = None
    rust.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    rust.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))


def read_tokenizer_config(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json as a dict ({} when absent; an unreadable one is reported and ignored, as before)."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        log.warning("ignoring unreadable %s (%s)", path, exc)
        return {}
    if not isinstance(config, dict):
        log.warning("ignoring %s: it holds no JSON object", path)
        return {}
    return config


def _byte_level_bpe(folder: Path, config: Mapping[str, Any]) -> RustTokenizer:
    bpe = models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok = RustTokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    if "<|endoftext|>" in vocab:
        tok.add_special_tokens(["<|endoftext|>"])
    # Without tokenizer.json, transformers honours add_bos_token / add_eos_token (update_post_processor)
    names = chat.special_token_strings(config)
    bos = names.get("bos_token", "<|endoftext|>") if config.get("add_bos_token") else None
    eos = names.get("eos_token", "<|endoftext|>") if config.get("add_eos_token") else None
    bos, eos = (t if t is not None and tok.token_to_id(t) is not None else None for t in (bos, eos))
    if bos or eos:
        single = " ".join(([f"{bos}:0"] if bos else []) + ["$A:0"] + ([f"{eos}:0"] if eos else []))
        marks = {t: tok.token_to_id(t) for t in (bos, eos) if t}
        tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=list(marks.items()))
    return tok


def _wordpiece(folder: Path) -> RustTokenizer:
    config = {}
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except ValueError:
            log.warning("ignoring unreadable %s", cfg_path)
    vocab = {}
    for i, line in enumerate((folder / "vocab.txt").read_text(encoding="utf-8").splitlines()):
        vocab.setdefault(line.rstrip("\n"), i)
    tok = RustTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    lower = bool(config.get("do_lower_case", True))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lower, strip_accents=None if lower else False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in vocab]
    tok.add_special_tokens(specials)
    if "[CLS]" in vocab and "[SEP]" in vocab:
        tok.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    return tok
