"""Measure what tiny-llama's MODEL_CARD.md states, on an exported folder, through the app's own engine
(`load_model` + `Model.run` -> Trace: the same patterns and logits the app shows).

    python tools/card_tiny_llama.py [resources/models/tiny-llama] [--compare resources/models/tiny-gpt]

Prints:
- held-out bits per character (sliding windows of 256 tokens, as tiny-gpt's card) and on SAMPLE, the
  fixed held-out passage the tests use;
- per head: induction score on [EOT] R R for R of 8, 16, 32, 64 random tokens, previous-token score on
  PREVIOUS_TEXT and on random tokens, and the key/value head each query head reads;
- the relative-offset head: its mean weight at offsets 0..4 back for queries at different absolute
  positions (the same band wherever the text starts), and the largest change when a text is moved;
- past the trained window (256): bits per token by position in 1,024-token windows of held-out text,
  the previous-token score at late positions, induction across a distance the training never showed.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import kjv_data  # noqa: E402

from engine import load_model  # noqa: E402

log = logging.getLogger("card_tiny_llama")

# Genesis 8:1-5, from a held-out chapter (chapter counter 7): the tests' fixed bits-per-character sample
SAMPLE = (
    "And God remembered Noah, and every living thing, and all the cattle that was with him in the ark: and God made "
    "a wind to pass over the earth, and the waters asswaged;\n"
    "The fountains also of the deep and the windows of heaven were stopped, and the rain from heaven was "
    "restrained;\n"
    "And the waters returned from off the earth continually: and after the end of the hundred and fifty days the "
    "waters were abated.\n"
    "And the ark rested in the seventh month, on the seventeenth day of the month, upon the mountains of Ararat.\n"
    "And the waters decreased continually until the tenth month: in the tenth month, on the first day of the month, "
    "were the tops of the mountains seen.\n"
)
PREVIOUS_TEXT = "And God said, Let there be light: and there was light. And God saw the light, that it was good."
REPEAT_LENGTHS = (8, 16, 32)
TRAINED_WINDOW = 256


def nll_of(model, ids: list[int]) -> np.ndarray:  # noqa: ANN001 - engine Model
    """Negative log-likelihood (nats) of ids[1:], each predicted from the ids before it, in one forward."""
    logits = torch.from_numpy(np.array(model.run(ids).logits[:-1]))
    return torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none").numpy()


def bits_per_char(model, text: str, window: int = TRAINED_WINDOW, stride: int | None = None) -> float:  # noqa: ANN001
    """tiny-gpt's measure: the text's tokens (no special tokens) after <|endoftext|>, scored in sliding
    windows of `window` tokens, each token once, with at least window - stride tokens of context."""
    eot = model.config.bos_token_id
    stream = [i for line in text.splitlines(keepends=True) for i in model.tokenizer.encode(line, special_tokens=False)]
    stride = stride or window // 2
    total, scored = 0.0, 0
    while scored < len(stream):
        lo = max(0, scored + stride - (window - 1)) if scored else 0
        hi = min(len(stream), lo + window - 1)
        nll = nll_of(model, [eot, *stream[lo:hi]])
        total += float(nll[scored - lo:].sum())
        scored = hi
    return total / math.log(2) / len(text)


def repeat_ids(model, n: int, seed: int, gap: list[int] | None = None) -> list[int]:  # noqa: ANN001
    """[EOT] R (gap) R with R n random token ids (uniform over the vocabulary, as in training)."""
    rng = np.random.default_rng(seed)
    span = rng.integers(1, model.config.vocab_size, size=n).tolist()
    return [model.config.bos_token_id, *span, *(gap or []), *span]


def induction_score(model, n: int, layer: int, seed: int = 0, gap: list[int] | None = None) -> np.ndarray:  # noqa: ANN001
    """Per head: mean weight from each token of R's second copy (but its last) to the token after its first
    occurrence."""
    ids = repeat_ids(model, n, seed, gap)
    pattern = model.run(ids).attention("self", layer)
    g = len(gap or [])
    q = np.arange(1 + n + g, 1 + 2 * n + g - 1)
    return pattern[:, q, q - n - g + 1].mean(-1)


def previous_score(pattern: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return pattern[:, queries, queries - 1].mean(-1)


def offset_profile(pattern: np.ndarray, queries: np.ndarray, max_offset: int = 4) -> np.ndarray:
    """[heads, max_offset + 1]: mean weight on the key `o` positions back, o = 0..max_offset."""
    return np.stack([pattern[:, queries, queries - o].mean(-1) for o in range(max_offset + 1)], axis=-1)


def held_out_stream(model, valid_txt: Path) -> list[int]:  # noqa: ANN001
    text = valid_txt.read_text(encoding="utf-8")
    return [i for line in text.splitlines(keepends=True) for i in model.tokenizer.encode(line, special_tokens=False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default=str(ROOT / "resources" / "models" / "tiny-llama"))
    ap.add_argument("--compare", default=None, help="another bundled folder measured the same way (e.g. tiny-gpt)")
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--long-windows", type=int, default=24, help="1,024-token held-out windows for the past-256 check")
    ap.add_argument("--skip-bpc", action="store_true", help="skip the full held-out bits per character (slow)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    _, valid_txt = kjv_data.prepare(args.data)
    for folder in [args.folder] + ([args.compare] if args.compare else []):
        model = load_model(folder, device="cpu")
        log.info("== %s: %s, %d layers x %d query heads (%d key/value heads), %.2fM parameters, stored as %s",
                 folder, model.config.model_type, model.n_layers, model.n_heads, model.config.n_kv_heads,
                 model.n_params / 1e6, "bfloat16" if "bfloat16" in (Path(folder) / "config.json").read_text() else "?")
        log.info("bits/char on SAMPLE (Genesis 8:1-5, held out): %.4f", bits_per_char(model, SAMPLE))
        if not args.skip_bpc:
            log.info("held-out bits per character (60 chapters, windows of 256): %.4f",
                     bits_per_char(model, valid_txt.read_text(encoding="utf-8")))
        if folder == args.folder:
            measure(model, valid_txt, args.long_windows)


def measure(model, valid_txt: Path, long_windows: int) -> None:  # noqa: ANN001, C901 - one report
    L, H = model.n_layers, model.n_heads
    group = H // model.config.n_kv_heads
    log.info("query head -> key/value head it reads: %s", {h: h // group for h in range(H)})

    # induction heads
    per_len = {n: np.stack([induction_score(model, n, layer, seed=n) for layer in range(L)]) for n in (*REPEAT_LENGTHS, 64)}
    mean = np.mean([per_len[n] for n in REPEAT_LENGTHS], axis=0)
    li, hi = np.unravel_index(mean.argmax(), mean.shape)
    log.info("induction score [layer, head], mean over repeats of %s random tokens; best L%dH%d %.3f (8/16/32/64: %s)\n%s",
             REPEAT_LENGTHS, li, hi, mean[li, hi], " / ".join(f"{per_len[n][li, hi]:.3f}" for n in per_len),
             np.array2string(mean, precision=2))

    # previous-token heads
    ids = model.tokenizer.encode(PREVIOUS_TEXT)
    trace = model.run(ids)
    q = np.arange(2, len(ids))
    prev_text = np.stack([previous_score(trace.attention("self", layer), q) for layer in range(L)])
    rand = repeat_ids(model, 120, seed=7)[:121]  # [EOT] + 120 random tokens, no repeat
    trace_r = model.run(rand)
    qr = np.arange(2, len(rand))
    prev_rand = np.stack([previous_score(trace_r.attention("self", layer), qr) for layer in range(L)])
    lp, hp = np.unravel_index(prev_text.argmax(), prev_text.shape)
    log.info("previous-token score on %r; best L%dH%d %.3f (on random tokens %.3f)\n%s", PREVIOUS_TEXT[:40], lp, hp,
             prev_text[lp, hp], prev_rand[lp, hp], np.array2string(prev_text, precision=2))
    log.info("previous-token score on 120 random tokens\n%s", np.array2string(prev_rand, precision=2))

    # relative offset only: one passage of held-out text placed at different start positions (after other
    # held-out text); the head's weight on the keys 0..4 back from each query of the passage
    stream = held_out_stream(model, valid_txt)
    eot = model.config.bos_token_id
    passage = stream[2000:2100]
    log.info("relative-offset check: a 100-token held-out passage placed after 0, 150, 400, 800 other tokens")
    profiles = {}
    for start in (0, 150, 400, 800):
        seq = [eot, *stream[5000:5000 + start], *passage]
        trace = model.run(seq)
        qs = np.arange(1 + start + 4, len(seq))
        profiles[start] = np.stack([offset_profile(trace.attention("self", layer), qs) for layer in range(L)])
    for layer, head in ((lp, hp), (li, hi)):
        rows = "; ".join(f"start {s}: " + " ".join(f"{v:.2f}" for v in p[layer, head]) for s, p in profiles.items())
        log.info("  L%dH%d weight on offsets 0..4 back: %s", layer, head, rows)
    spread = np.max([np.abs(p - profiles[0]).max(-1) for p in profiles.values()], axis=0)  # [L, H]
    log.info("largest change of any offset weight (0..4) when the passage moves, per head\n%s",
             np.array2string(spread, precision=3))

    # past the trained window: windows of [EOT] + 1,023 held-out tokens (the whole context of 1,024)
    n = len(stream) // 1023
    picks = np.linspace(0, n - 1, min(long_windows, n)).astype(int)
    edges = [(0, 256), (256, 512), (512, 768), (768, 1023)]  # query positions; query i predicts token i + 1
    buckets = np.zeros(len(edges))
    prev_late = np.zeros((L, H, len(edges)))
    for w in picks:
        seq = [eot, *stream[w * 1023:(w + 1) * 1023]]
        nll = nll_of(model, seq)
        trace = model.run(seq)
        for b, (lo, up) in enumerate(edges):
            buckets[b] += nll[lo:up].mean() / len(picks)
            for layer in range(L):
                prev_late[layer, :, b] += previous_score(trace.attention("self", layer), np.arange(max(2, lo), up)) / len(picks)
    log.info("past the trained window: bits per token by query position over %d held-out windows of 1,024 tokens:", len(picks))
    for b, (lo, up) in enumerate(edges):
        log.info("  positions %4d-%4d: %.3f bits/token", lo, up - 1, buckets[b] / math.log(2))
    log.info("  previous-token head L%dH%d by position bucket: %s", lp, hp,
             " ".join(f"{v:.3f}" for v in prev_late[lp, hp]))
    filler = stream[9000:9000 + 600]
    for g in (0, 100, 200, 300, 600):
        s = induction_score(model, 32, li, seed=3, gap=filler[:g])[hi]
        log.info("  induction head L%dH%d, R of 32 tokens, copies %d tokens apart (ends at position %d): %.3f",
                 li, hi, 32 + g, 1 + 64 + g, s)


if __name__ == "__main__":
    main()
