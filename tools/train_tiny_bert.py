"""Train the bundled tiny-bert: a 4-layer BERT-format masked-LM encoder on the King James Bible.

The bundled model came from one run from scratch on this project's 2-core CPU (about 105 minutes):

    python tools/train_tiny_bert.py --minutes 105

The defaults are that run's settings (12,500 steps of 128 verses batched by length, mask rate 0.3,
peak lr 7e-4 after 500 warm-up steps, cosine decay, seed 0). With --minutes the cosine schedule
follows max(step / steps, elapsed / budget), so a run stops on time on a slower or busier machine
(that run made 11,347 steps before its 105 minutes were up; a rerun elsewhere is close to, not
bit-identical with, the bundled model); without --minutes the schedule is the fixed 12,500 steps.

Each training example is one verse ([CLS] verse [SEP], at most --train-len tokens); --mask-rate of
its tokens are chosen for prediction (80% -> [MASK], 10% -> a random token, 10% unchanged), as in BERT.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import kjv_data  # noqa: E402
from kjv_data import FAMILIAR  # noqa: E402

from engine.checkpoints.export_hf import save_hf  # noqa: E402
from engine.checkpoints.registry import CONVERTERS  # noqa: E402
from engine.network import Transformer  # noqa: E402

log = logging.getLogger("train_tiny_bert")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(train_txt: Path, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train([str(train_txt)], trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                          show_progress=False))
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    return tok


def hf_config(args: argparse.Namespace, vocab: int) -> dict:
    return {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": vocab, "hidden_size": args.d_model,
            "num_hidden_layers": args.layers, "num_attention_heads": args.heads, "intermediate_size": 4 * args.d_model,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "max_position_embeddings": args.max_len, "type_vocab_size": 2, "initializer_range": 0.02,
            "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute", "tie_word_embeddings": True,
            "use_cache": False}


def verses(tok: Tokenizer, path: Path, max_len: int) -> list[list[int]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for enc in tok.encode_batch(lines):
        ids = enc.ids
        out.append(ids if len(ids) <= max_len else ids[:max_len - 1] + [ids[-1]])
    return out


def bucketed_batches(seqs: list[list[int]], batch: int, rng: np.random.Generator, pool: int = 50):
    """Endless batches of verses of similar length: each epoch is shuffled, cut into pools of
    `pool` batches, each pool sorted by length and cut into batches, and the batches shuffled.
    Random batches of verses are half padding (lengths 10–64 tokens); these are nearly full."""
    lengths = np.array([len(s) for s in seqs])
    while True:
        order = rng.permutation(len(seqs))
        batches = []
        for start in range(0, len(order), batch * pool):
            chunk = order[start:start + batch * pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i:i + batch] for i in range(0, len(chunk), batch)]
        for b in rng.permutation(len(batches)):
            yield [seqs[i] for i in batches[b]]


def mask_batch(seqs: list[list[int]], rng: np.random.Generator, vocab: int, mask_id: int, rate: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    real = ids >= len(SPECIALS)  # never mask padding, [CLS] or [SEP]
    chosen = (rng.random(ids.shape) < rate) & real
    labels = np.where(chosen, ids, -100)
    r = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[chosen & (r < 0.8)] = mask_id
    swap = chosen & (r >= 0.8) & (r < 0.9)
    inputs[swap] = rng.integers(len(SPECIALS), vocab, size=int(swap.sum()))
    return torch.from_numpy(inputs), torch.from_numpy(ids != 0).long(), torch.from_numpy(labels)


def masked_logits(net: Transformer, inputs: torch.Tensor, key_mask: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    h = net.encode(inputs, key_mask=key_mask)
    return net.mlm_logits(h[where])  # only the positions to predict


@torch.no_grad()
def held_out_accuracy(net: Transformer, seqs: list[list[int]], vocab: int, mask_id: int, seed: int = 1) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) on 15% masked held-out tokens, every chosen token -> [MASK]."""
    rng = np.random.default_rng(seed)
    net.eval()
    right = total = 0
    nll = 0.0
    for i in range(0, len(seqs), 128):
        inputs, key_mask, labels = mask_batch(seqs[i:i + 128], rng, vocab, mask_id, 0.15)
        where = labels != -100
        inputs[where] = mask_id
        logits = masked_logits(net, inputs, key_mask, where)
        right += int((logits.argmax(-1) == labels[where]).sum())
        nll += float(F.cross_entropy(logits, labels[where], reduction="sum"))
        total += int(where.sum())
    net.train()
    return right / total, nll / total


@torch.no_grad()
def familiar(net: Transformer, tok: Tokenizer) -> list[tuple[str, str, str]]:
    net.eval()
    out = []
    for text, word in FAMILIAR:
        ids = tok.encode(text).ids
        pos = ids.index(tok.token_to_id("[MASK]"))
        logits = net.mlm_logits(net.encode(torch.tensor([ids])))[0, pos]
        out.append((text, word, tok.id_to_token(int(logits.argmax()))))
    net.train()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--run", default=str(ROOT / "runs" / "tiny-bert"))
    ap.add_argument("--out", default=str(ROOT / "resources" / "models" / "tiny-bert"))
    ap.add_argument("--vocab", type=int, default=6000)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--train-len", type=int, default=64, help="verses are cut to this many tokens for training")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12500)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--mask-rate", type=float, default=0.3)
    ap.add_argument("--minutes", type=float, default=None,
                    help="wall-clock budget: the schedule runs on max(step/steps, elapsed/budget) and training stops at 1")
    ap.add_argument("--length-buckets", action=argparse.BooleanOptionalAction, default=True,
                    help="batch verses of similar length: random batches are half padding (default on)")
    ap.add_argument("--init", default=None, help="start from this exported tiny-bert folder (a later phase)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=500)
    args = ap.parse_args()
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(run / "train.log")])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train_txt, valid_txt = kjv_data.prepare(args.data)
    if args.init:  # a later phase: the tokenizer and weights of an exported tiny-bert folder
        tok = Tokenizer.from_file(str(Path(args.init) / "tokenizer.json"))
    else:
        tok = train_tokenizer(train_txt, args.vocab)
    vocab, mask_id = tok.get_vocab_size(), tok.token_to_id("[MASK]")
    hf = hf_config(args, vocab)
    cfg = CONVERTERS["bert"].config(hf, {"cls.predictions.bias"}).with_(mask_token_id=mask_id)
    net = Transformer(cfg)
    for name, p in net.named_parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, 0.0, 0.02)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)
    if args.init:
        from engine.checkpoints.mapping import build_state_dict, plan
        from engine.checkpoints.weights import WeightFiles

        weights = WeightFiles(Path(args.init))
        expected = {k: list(v.shape) for k, v in net.state_dict().items()}
        net.load_state_dict(build_state_dict(plan(CONVERTERS["bert"], cfg, expected, weights.shapes), weights.load()))
        log.info("phase start: weights from %s", args.init)
    log.info("tiny-bert: %.2fM parameters, vocab %d, %s", sum(p.numel() for p in net.parameters()) / 1e6, vocab, cfg)
    train = verses(tok, train_txt, args.train_len)
    valid = verses(tok, valid_txt, args.max_len)
    log.info("%d training verses, %d held-out verses", len(train), len(valid))

    decay = [p for p in net.parameters() if p.dim() == 2]
    other = [p for p in net.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    batches = bucketed_batches(train, args.batch, rng) if args.length_buckets else None
    t0 = time.time()
    smooth = None
    step = 0
    while True:
        step += 1
        progress = min(1.0, max(step / args.steps, (time.time() - t0) / (60 * args.minutes) if args.minutes else 0.0))
        lr = args.lr * min(1.0, step / args.warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr
        if batches is not None:
            batch = next(batches)
        else:
            batch = [train[i] for i in rng.integers(0, len(train), size=args.batch)]
        inputs, key_mask, labels = mask_batch(batch, rng, vocab, mask_id, args.mask_rate)
        where = labels != -100
        loss = F.cross_entropy(masked_logits(net, inputs, key_mask, where), labels[where])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        value = loss.item()
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        if step % 50 == 0:
            log.info("step %d (%.1f%%) loss %.4f (smoothed %.4f) lr %.2e %.0fs", step, 100 * progress, value, smooth, lr,
                     time.time() - t0)
        if step % args.eval_every == 0 or progress >= 1.0:
            acc, ce = held_out_accuracy(net, valid[:400], vocab, mask_id)
            fills = familiar(net, tok)
            log.info("step %d: held-out masked accuracy %.4f (loss %.3f); familiar verses %d/%d: %s", step, acc, ce,
                     sum(w == g for _, w, g in fills), len(fills), [g for _, _, g in fills])
        if progress >= 1.0:
            break
    log.info("trained %d steps in %.0fs", step, time.time() - t0)
    acc, ce = held_out_accuracy(net, valid, vocab, mask_id)
    log.info("held-out masked-token accuracy %.4f, loss %.4f", acc, ce)
    for text, word, got in familiar(net, tok):
        log.info("%s %r -> %r (expected %r)", "ok " if got == word else "BAD", text[:60], got, word)
    save_hf(net, args.out, hf, tok)


if __name__ == "__main__":
    main()
