"""Measure what tiny-bert's MODEL_CARD.md states, on an exported folder, through the app's own engine.

    python tools/card_tiny_bert.py [resources/models/tiny-bert]

Prints: held-out masked-token accuracy (15 % of the tokens of every held-out verse -> [MASK], top-1),
each familiar verse's prediction and the rank of the right word, the formulaic phrases the tests check,
and per head the mean attention to the previous and to the next token over held-out verses.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import kjv_data  # noqa: E402
from kjv_data import FAMILIAR, FORMULAIC  # noqa: E402
from train_tiny_bert import held_out_accuracy, verses  # noqa: E402

from engine import load_model  # noqa: E402
from engine.session import Session  # noqa: E402

log = logging.getLogger("card_tiny_bert")


def fill(model, text: str, word: str) -> tuple[str, int | None]:  # noqa: ANN001 - engine Model
    """(top-1 word, 1-based rank of `word` among the top 10 or None) at the [MASK]."""
    step = Session(model, prompt=text).step()
    got = model.tokenizer.decode([step.token_id])
    top = np.argsort(-step.probs)[:10]
    ranks = [i + 1 for i, t in enumerate(top) if model.tokenizer.decode([int(t)]) == word]
    return got, (ranks[0] if ranks else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default=str(ROOT / "resources" / "models" / "tiny-bert"))
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--head-verses", type=int, default=200)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    model = load_model(args.folder)
    _, valid_txt = kjv_data.prepare(args.data)
    tok = Tokenizer.from_file(str(Path(args.folder) / "tokenizer.json"))
    valid = verses(tok, valid_txt, model.config.max_positions)
    acc, ce = held_out_accuracy(model.net, valid, tok.get_vocab_size(), tok.token_to_id("[MASK]"))
    log.info("held-out masked-token accuracy %.4f (cross-entropy %.3f nats) on %d verses", acc, ce, len(valid))

    for title, items in (("familiar verses", FAMILIAR), ("formulaic phrases", FORMULAIC)):
        right = top5 = 0
        for text, word in items:
            got, rank = fill(model, text, word)
            right += got == word
            top5 += rank is not None and rank <= 5
            log.info("  %-4s %-70s -> %-10s (%s: rank %s)", "ok" if got == word else "BAD", text[:70], got, word,
                     rank or ">10")
        log.info("%s: top-1 %d/%d, top-5 %d/%d", title, right, len(items), top5, len(items))

    L, H = model.n_layers, model.n_heads
    prev, nxt = np.zeros((L, H)), np.zeros((L, H))
    for ids in valid[:args.head_verses]:
        trace = model.run(ids)
        q = np.arange(1, len(ids) - 1)  # the verse's own tokens, not [CLS]/[SEP] as queries
        for layer in range(L):
            a = trace.attention("encoder", layer)  # (H, n, n)
            prev[layer] += a[:, q, q - 1].mean(-1)
            nxt[layer] += a[:, q, q + 1].mean(-1)
    prev /= args.head_verses
    nxt /= args.head_verses
    for name, score in (("previous-token", prev), ("next-token", nxt)):
        layer, head = np.unravel_index(score.argmax(), score.shape)
        log.info("%s attention per head (rows = layers) over %d held-out verses; best L%dH%d %.2f\n%s", name,
                 args.head_verses, layer, head, score[layer, head], np.array2string(score, precision=2))


if __name__ == "__main__":
    main()
