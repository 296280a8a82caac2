"""Train the bundled tiny-gpt: a 4-layer GPT-2-format decoder on the King James Bible.

The bundled model came from four phases, each starting from the previous phase's checkpoint
(runs/tiny-gpt/last.pt is written every --eval-every steps; copy it before the next phase):

    python tools/train_tiny_gpt.py --steps 100000 --minutes 82 --stop-at 1000          # -> phase1.pt
    python tools/train_tiny_gpt.py --init runs/tiny-gpt/phase1.pt --steps 100000 --minutes 57 --lr 1.5e-3 \
        --warmup 50 --p-random 0.5 --seed 1 --stop-at 500                               # -> phase2a.pt
    python tools/train_tiny_gpt.py --init runs/tiny-gpt/phase2a.pt --steps 100000 --minutes 50 --lr 1.5e-3 \
        --warmup 50 --p-dense 0.4 --p-random 0.2 --p-copy 0.1 --seed 2 --stop-at 750     # -> phase2b.pt
    python tools/train_tiny_gpt.py --init runs/tiny-gpt/phase2b.pt --steps 100000 --minutes 33 --lr 1.5e-3 \
        --warmup 20 --batch 8 --synth-batch 128 --synth-len 48 --p-dense 0.2 --p-random 0.2 --p-copy 0.1 \
        --seed 3 --threads 2 --eval-every 100                                           # -> the export
    python tools/train_tiny_gpt.py --export-only      # export runs/tiny-gpt/last.pt again

With --minutes the cosine schedule follows wall-clock time, so a rerun on another machine is close
to, not bit-identical with, the bundled model; pass --steps N without --minutes for a fixed schedule.

Curriculum (so that induction heads form): text windows [EOT] + 256 KJV tokens; in some windows a
span of random tokens of varying length (4-48) is written twice at varying distances (--p-random),
or the window is filled, after some text, with pairs of repeated random spans (--p-dense), or a
span of the window's own text is copied further on (--p-copy). In the last phase every step also
trains on 128 short sequences [EOT] R R filler (--synth-batch). The loss on the first copy of a
random span is masked (it is unpredictable); everything else is next-token prediction.
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
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import kjv_data  # noqa: E402

from engine.checkpoints.export_hf import save_hf  # noqa: E402
from engine.config import ModelConfig  # noqa: E402
from engine.network import Transformer  # noqa: E402

log = logging.getLogger("train_tiny_gpt")
EOT = "<|endoftext|>"


def train_tokenizer(train_txt: Path, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(train_txt)], trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B",
                                                       special_tokens=[(EOT, tok.token_to_id(EOT))])
    return tok


def token_stream(tok: Tokenizer, path: Path) -> np.ndarray:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    ids: list[int] = []
    for enc in tok.encode_batch(lines, add_special_tokens=False):
        ids.extend(enc.ids)
    return np.array(ids, dtype=np.int64)


def model_config(args: argparse.Namespace, vocab: int, eot: int) -> tuple[ModelConfig, dict]:
    cfg = ModelConfig(family="decoder", model_type="gpt2", vocab_size=vocab, d_model=args.d_model, n_heads=args.heads,
                      d_ff=4 * args.d_model, n_decoder_layers=args.layers, max_positions=args.ctx,
                      position_scheme="learned", norm="layernorm", norm_placement="pre", norm_eps=1e-5, final_norm=True,
                      activation="gelu_new", tie_embeddings=True, bos_token_id=eot, eos_token_id=eot)
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab, "n_positions": args.ctx,
          "n_embd": args.d_model, "n_layer": args.layers, "n_head": args.heads, "n_inner": None,
          "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
          "attn_pdrop": 0.0, "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True,
          "bos_token_id": eot, "eos_token_id": eot, "use_cache": True}
    return cfg, hf


def init_weights(net: Transformer, n_layers: int) -> None:
    for name, p in net.named_parameters():
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("attn.out.weight", "ffn.down.weight")) else 0.02
            torch.nn.init.normal_(p, 0.0, std)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)


def make_batch(stream: np.ndarray, rng: np.random.Generator, batch: int, ctx: int, eot: int, vocab: int,
               p_random: float, p_copy: float, p_dense: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows [EOT, text...] of ctx+1 tokens; some get a repeated random span or a copied text span."""
    starts = rng.integers(0, len(stream) - ctx, size=batch)
    x = np.empty((batch, ctx + 1), dtype=np.int64)
    x[:, 0] = eot
    for b, s in enumerate(starts):
        x[b, 1:] = stream[s:s + ctx]
    y = x[:, 1:].copy()
    for b in range(batch):
        if rng.random() < p_dense:  # from a random point on: pairs of random spans, text between them
            pos = int(rng.integers(1, 64))
            y[b] = -100
            y[b, :pos - 1] = x[b, 1:pos]
            while True:
                n, gap = int(rng.integers(4, 49)), int(rng.integers(0, 17))
                if pos + 2 * n + gap > ctx + 1:
                    break
                span = rng.integers(1, vocab, size=n)
                x[b, pos:pos + n] = span
                x[b, pos + n + gap:pos + 2 * n + gap] = span
                y[b, pos + n - 1:pos + 2 * n + gap - 1] = x[b, pos + n:pos + 2 * n + gap]  # gap text, then copy
                y[b, pos + n + gap - 1] = -100  # the copy's first token is unpredictable
                pos += 2 * n + gap
            y[b, pos - 1:] = x[b, pos:]  # text after the last pair
            continue
        u = rng.random()
        if u < p_random + p_copy:
            n = int(rng.integers(4, 49))
            first = int(rng.integers(1, ctx + 1 - 2 * n))
            second = int(rng.integers(first + n, ctx + 2 - n))
            if u < p_random:  # random tokens, written twice; their first copy is unpredictable
                span = rng.integers(1, vocab, size=n)
                x[b, first:first + n] = span
                y[b, first - 1:first + n - 1] = -100
            else:  # the window's own text, copied further on
                span = x[b, first:first + n].copy()
            x[b, second:second + n] = span
            y[b] = x[b, 1:]
            if u < p_random:
                y[b, first - 1:first + n - 1] = -100
                y[b, second - 1] = -100
    return torch.from_numpy(x[:, :-1]), torch.from_numpy(y)


def synthetic_batch(rng: np.random.Generator, batch: int, length: int, eot: int, vocab: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Short sequences [EOT] R R filler of random tokens; only the second copy of R is scored."""
    x = rng.integers(1, vocab, size=(batch, length + 1))
    x[:, 0] = eot
    y = np.full((batch, length), -100, dtype=np.int64)
    for b in range(batch):
        n = int(rng.integers(4, length // 2))
        x[b, 1 + n:1 + 2 * n] = x[b, 1:1 + n]
        y[b, n + 1:2 * n] = x[b, n + 2:2 * n + 1]
    return torch.from_numpy(x[:, :-1]), torch.from_numpy(y)


@torch.no_grad()
def bits_per_char(net: Transformer, tok: Tokenizer, path: Path, ctx: int, eot: int, stride: int | None = None) -> float:
    """Held-out bits per character: sliding windows, each token scored once with >= ctx-stride context."""
    stream = token_stream(tok, path)
    n_chars = len(path.read_text(encoding="utf-8"))
    stride = stride or ctx // 2
    net.eval()
    total, pos = 0.0, 0
    scored = 0
    while scored < len(stream):
        lo = max(0, scored + stride - (ctx - 1)) if scored else 0
        hi = min(len(stream), lo + ctx - 1)
        ids = torch.tensor([[eot, *stream[lo:hi].tolist()]])
        logits = net.logits(net.decode(ids))[0]  # predicts ids[1:] from ids[:-1]
        nll = F.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
        first = scored - lo  # tokens lo..scored-1 were scored by an earlier window
        total += float(nll[first:].sum())
        scored = hi
        pos += 1
    net.train()
    return total / math.log(2) / n_chars


def head_scores(net: Transformer, cfg: ModelConfig, eot: int, lengths=(10, 20, 40), seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Induction score (second copy of a random span -> token after the first occurrence) and
    previous-token score, per [layer, head]."""
    rng = np.random.default_rng(seed)
    ind = np.zeros((cfg.n_decoder_layers, cfg.n_heads))
    prev = np.zeros_like(ind)
    net.eval()
    with torch.no_grad():
        for n in lengths:
            span = rng.integers(1, cfg.vocab_size, size=n)
            ids = torch.tensor([[eot, *span, *span]])
            cap: dict = {}
            net.decode(ids, capture=cap)
            q = np.arange(1 + n, 1 + 2 * n - 1)  # second copy, all but its last token
            for layer in range(cfg.n_decoder_layers):
                pat = cap[f"decoder.{layer}.attn"][0].numpy()
                ind[layer] += pat[:, q, q - n + 1].mean(-1) / len(lengths)
                prev[layer] += pat[:, q, q - 1].mean(-1) / len(lengths)
    net.train()
    return ind, prev


@torch.no_grad()
def sample(net: Transformer, tok: Tokenizer, prompt: str, n: int = 60) -> str:
    net.eval()
    ids = tok.encode(prompt).ids
    for _ in range(n):
        logits = net.logits(net.decode(torch.tensor([ids[-net.cfg.max_positions:]])))[0, -1]
        ids.append(int(logits.argmax()))
    net.train()
    return tok.decode(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--run", default=str(ROOT / "runs" / "tiny-gpt"))
    ap.add_argument("--out", default=str(ROOT / "resources" / "models" / "tiny-gpt"))
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--steps", type=int, default=3400)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--p-random", type=float, default=0.2, help="share of windows with a repeated random-token span")
    ap.add_argument("--p-copy", type=float, default=0.1, help="share of windows with a copied text span")
    ap.add_argument("--minutes", type=float, default=None,
                    help="wall-clock budget: the schedule runs on max(step/steps, elapsed/budget) and training stops at 1")
    ap.add_argument("--p-dense", type=float, default=0.0,
                    help="share of windows filled (after some text) with pairs of repeated random spans")
    ap.add_argument("--synth-batch", type=int, default=0,
                    help="per step, this many short [EOT] R R sequences of random tokens besides the text windows")
    ap.add_argument("--synth-len", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--init", default=None, help="start from this checkpoint (a later curriculum phase)")
    ap.add_argument("--stop-at", type=int, default=None, help="stop after this step (the schedule is not shortened)")
    args = ap.parse_args()
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(run / "train.log")])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train_txt, valid_txt = kjv_data.prepare(args.data)
    tok_path = run / "tokenizer.json"
    if tok_path.is_file():
        tok = Tokenizer.from_file(str(tok_path))
    else:
        tok = train_tokenizer(train_txt, args.vocab)
        tok.save(str(tok_path))
    eot = tok.token_to_id(EOT)
    vocab = tok.get_vocab_size()
    cfg, hf = model_config(args, vocab, eot)
    net = Transformer(cfg)
    init_weights(net, args.layers)
    log.info("tiny-gpt: %.2fM parameters, vocab %d, %s", sum(p.numel() for p in net.parameters()) / 1e6, vocab, cfg)

    if args.init:
        state = torch.load(args.init, weights_only=True)
        net.load_state_dict(state["model"])
        log.info("phase start: weights of step %d from %s", state["step"], args.init)
    if not args.export_only:
        stream = token_stream(tok, train_txt)
        log.info("train stream: %d tokens (%.2f chars/token)", len(stream), train_txt.stat().st_size / len(stream))
        decay = [p for n, p in net.named_parameters() if p.dim() == 2]
        other = [p for n, p in net.named_parameters() if p.dim() != 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                lr=args.lr, betas=(0.9, 0.95))
        t0 = time.time()
        smooth = None
        step = 0
        while True:
            step += 1
            progress = min(1.0, max(step / args.steps, (time.time() - t0) / (60 * args.minutes) if args.minutes else 0.0))
            lr = args.lr * min(1.0, step / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = make_batch(stream, rng, args.batch, args.ctx, eot, vocab, args.p_random, args.p_copy, args.p_dense)
            logits = net.logits(net.decode(x))
            loss = F.cross_entropy(logits.view(-1, vocab), y.reshape(-1), ignore_index=-100)
            if args.synth_batch:
                sx, sy = synthetic_batch(rng, args.synth_batch, args.synth_len, eot, vocab)
                h = net.decode(sx)
                where = sy != -100
                loss = loss + F.cross_entropy(net.logits(h[where]), sy[where])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            value = loss.item()
            smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
            if step % 50 == 0:
                log.info("step %d (%.1f%%) loss %.4f (smoothed %.4f) lr %.2e %.0fs", step, 100 * progress, value, smooth, lr,
                         time.time() - t0)
            if args.stop_at and step >= args.stop_at:
                progress = 1.0
            if step % args.eval_every == 0 or progress >= 1.0:
                torch.save({"step": step, "model": net.state_dict(), "seconds": time.time() - t0}, run / "last.pt")
                ind, prev = head_scores(net, cfg, eot)
                li, hi = np.unravel_index(ind.argmax(), ind.shape)
                lp, hp = np.unravel_index(prev.argmax(), prev.shape)
                log.info("step %d: best induction head L%dH%d %.3f, best previous-token head L%dH%d %.3f", step, li, hi,
                         ind[li, hi], lp, hp, prev[lp, hp])
                log.info("induction scores\n%s", np.array2string(ind, precision=2))
            if progress >= 1.0:
                break
        log.info("trained %d steps in %.0fs", step, time.time() - t0)
    else:
        state = torch.load(run / "last.pt", weights_only=True)
        net.load_state_dict(state["model"])
        log.info("loaded step %d from %s", state["step"], run / "last.pt")

    bpc = bits_per_char(net, tok, valid_txt, args.ctx, eot)
    log.info("held-out bits per character: %.4f", bpc)
    ind, prev = head_scores(net, cfg, eot)
    log.info("induction scores [layer, head]\n%s", np.array2string(ind, precision=3))
    log.info("previous-token scores [layer, head]\n%s", np.array2string(prev, precision=3))
    for prompt in ("In the beginning", "And the LORD said unto Moses,", "Blessed are the"):
        log.info("sample: %r", sample(net, tok, prompt))
    save_hf(net, args.out, hf, tok)


if __name__ == "__main__":
    main()
