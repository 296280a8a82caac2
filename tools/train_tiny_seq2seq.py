"""Train the bundled tiny-seq2seq: the original Transformer (post-LN, sinusoidal positions, ReLU,
scaled and shared embeddings) in Marian format, normalising human-written dates to ISO YYYY-MM-DD.

    python tools/train_tiny_seq2seq.py

Data are synthetic (tools/dates.py), drawn fresh for every batch from a seeded generator; a held-out
set from another seed (its source strings excluded from training) measures exact match.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import dates  # noqa: E402

from engine.checkpoints.export_hf import save_hf  # noqa: E402
from engine.checkpoints.registry import CONVERTERS  # noqa: E402
from engine.network import Transformer  # noqa: E402

log = logging.getLogger("train_tiny_seq2seq")
SPECIALS = ["<pad>", "</s>", "<unk>"]
CHARS = "0123456789abcdefghijklmnopqrstuvwxyz ,.-'/"


def build_tokenizer() -> Tokenizer:
    """Character level: every (lower-cased) character is a token; "</s>" is appended to encoded text."""
    vocab = {t: i for i, t in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", vocab["</s>"])])
    return tok


def hf_config(args: argparse.Namespace, vocab: int) -> dict:
    return {"model_type": "marian", "architectures": ["MarianMTModel"], "vocab_size": vocab, "decoder_vocab_size": vocab,
            "d_model": args.d_model, "encoder_layers": args.layers, "decoder_layers": args.layers,
            "encoder_attention_heads": args.heads, "decoder_attention_heads": args.heads,
            "encoder_ffn_dim": 4 * args.d_model, "decoder_ffn_dim": 4 * args.d_model, "activation_function": "relu",
            "max_position_embeddings": 64, "scale_embedding": True, "share_encoder_decoder_embeddings": True,
            "tie_word_embeddings": True, "normalize_before": False, "is_encoder_decoder": True,
            "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "encoder_layerdrop": 0.0,
            "decoder_layerdrop": 0.0, "init_std": 0.02, "pad_token_id": 0, "eos_token_id": 1,
            "decoder_start_token_id": 0, "forced_eos_token_id": 1, "max_length": 16, "num_beams": 1, "use_cache": True}


def encode_batch(tok: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encs = [e.ids for e in tok.encode_batch(texts)]
    width = max(map(len, encs))
    ids = torch.zeros(len(encs), width, dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, :len(e)] = torch.tensor(e)
    return ids, (ids != 0).long()


@torch.no_grad()
def greedy(net: Transformer, src: torch.Tensor, mask: torch.Tensor, max_len: int = 12) -> list[list[int]]:
    net.eval()
    memory = net.encode(src, key_mask=mask)
    out = torch.zeros(len(src), 1, dtype=torch.long)
    for _ in range(max_len):
        nxt = net.logits(net.decode(out, memory=memory, memory_mask=mask))[:, -1].argmax(-1)
        out = torch.cat([out, nxt[:, None]], 1)
    net.train()
    result = []
    for row in out[:, 1:].tolist():
        result.append(row[:row.index(1)] if 1 in row else row)
    return result


def exact_match(net: Transformer, tok: Tokenizer, pairs: list[tuple[str, str]], batch: int = 500) -> tuple[float, list]:
    wrong = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        src, mask = encode_batch(tok, [s for s, _ in chunk])
        for (s, t), ids in zip(chunk, greedy(net, src, mask)):
            got = tok.decode(ids)
            if got != t:
                wrong.append((s, t, got))
    return 1 - len(wrong) / len(pairs), wrong


@torch.no_grad()
def year_alignment(net: Transformer, tok: Tokenizer, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Per decoder layer and head: mean cross-attention mass that each output year digit puts on
    the same digit of the year in the source (teacher-forced)."""
    cfg = net.cfg
    score = np.zeros((cfg.n_decoder_layers, cfg.n_heads))
    net.eval()
    for s, t in pairs:
        src = tok.encode(s).ids
        year_at = s.lower().rindex(t[:4])  # characters are tokens: character index = token index
        dec = [0] + tok.encode(t, add_special_tokens=False).ids
        cap: dict = {}
        memory = net.encode(torch.tensor([src]))
        net.decode(torch.tensor([dec]), memory=memory, capture=cap)
        for layer in range(cfg.n_decoder_layers):
            pat = cap[f"decoder.{layer}.cross_attn"][0].numpy()  # (nh, T, S)
            for k in range(4):  # query k (after start + k digits) predicts year digit k
                score[layer] += pat[:, k, year_at + k] / (4 * len(pairs))
    net.train()
    return score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "tiny-seq2seq"))
    ap.add_argument("--out", default=str(ROOT / "resources" / "models" / "tiny-seq2seq"))
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-test", type=int, default=5000)
    ap.add_argument("--eval-every", type=int, default=500)
    args = ap.parse_args()
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(run / "train.log")])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tok = build_tokenizer()
    vocab = tok.get_vocab_size()
    hf = hf_config(args, vocab)
    cfg = CONVERTERS["marian"].config(hf, set())
    net = Transformer(cfg)
    for name, p in net.named_parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, 0.0, 0.02 if name != "embed.weight" else cfg.d_model ** -0.5)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)
    log.info("tiny-seq2seq: %.2fM parameters, vocab %d, %s", sum(p.numel() for p in net.parameters()) / 1e6, vocab, cfg)

    test = dates.dataset(args.n_test, seed=10_000 + args.seed)
    held_out = {s.lower() for s, _ in test}
    rng = random.Random(args.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    t0 = time.time()
    smooth = None
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        pairs = []
        while len(pairs) < args.batch:
            s, t = dates.sample(rng)
            if s.lower() not in held_out:
                pairs.append((s, t))
        src, mask = encode_batch(tok, [s for s, _ in pairs])
        tgt = torch.tensor([e.ids for e in tok.encode_batch([t for _, t in pairs])])  # YYYY-MM-DD </s>
        dec_in = torch.cat([torch.zeros(len(pairs), 1, dtype=torch.long), tgt[:, :-1]], 1)
        memory = net.encode(src, key_mask=mask)
        logits = net.logits(net.decode(dec_in, memory=memory, memory_mask=mask))
        loss = F.cross_entropy(logits.reshape(-1, vocab), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        value = loss.item()
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        if step % 50 == 0:
            log.info("step %d/%d loss %.4f (smoothed %.4f) lr %.2e %.0fs", step, args.steps, value, smooth, lr,
                     time.time() - t0)
        if step % args.eval_every == 0 and step < args.steps:
            acc, _ = exact_match(net, tok, test[:1000])
            log.info("step %d: exact match on 1000 held-out dates %.4f", step, acc)
    log.info("trained %d steps in %.0fs", args.steps, time.time() - t0)
    acc, wrong = exact_match(net, tok, test)
    log.info("held-out exact match: %.4f (%d of %d wrong)", acc, len(wrong), len(test))
    for w in wrong[:20]:
        log.info("wrong: %r -> %r (expected %r)", w[0], w[2], w[1])
    align = year_alignment(net, tok, test[:200])
    log.info("cross-attention mass of year digits on their source digit [layer, head]\n%s", np.array2string(align, precision=3))
    save_hf(net, args.out, hf, tok)


if __name__ == "__main__":
    main()
