"""Tokenizer: a `tokenizers.Tokenizer` with readable display strings and the model's special tokens."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from .errors import PromptError, TokenizerError
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
    def __init__(self, rust: RustTokenizer, source: str = "") -> None:
        rust.no_padding()  # some tokenizer.json files pad every input to 128
        rust.no_truncation()
        self._tok = rust
        self.source = source
        spec = json.loads(rust.to_str())
        decoder = (spec.get("decoder") or {}).get("type", "")
        pre = json.dumps(spec.get("pre_tokenizer") or {})
        self.byte_level = decoder == "ByteLevel" or '"ByteLevel"' in pre
        self.metaspace = decoder == "Metaspace" or '"Metaspace"' in pre
        self.special_ids = frozenset(i for i, t in rust.get_added_tokens_decoder().items() if t.special)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: Path) -> Tokenizer:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if path.is_file():
            rust = guarded(lambda: RustTokenizer.from_file(str(path)), TokenizerError,
                           f"{path} is not a valid tokenizer.json (re-save it with the tokenizers library)")
            return cls(rust, str(path))
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return cls(guarded(lambda: _byte_level_bpe(folder), TokenizerError,
                               f"cannot read the GPT-2 style vocab.json + merges.txt in {folder}"), str(folder / "vocab.json"))
        if (folder / "vocab.txt").is_file():
            return cls(guarded(lambda: _wordpiece(folder), TokenizerError,
                               f"cannot read the BERT style vocab.txt in {folder}"), str(folder / "vocab.txt"))
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


def _byte_level_bpe(folder: Path) -> RustTokenizer:
    bpe = models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok = RustTokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    if "<|endoftext|>" in vocab:
        tok.add_special_tokens(["<|endoftext|>"])
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
