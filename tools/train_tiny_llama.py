"""Train the bundled tiny-llama: a small Llama-format decoder (RoPE, RMSNorm, SwiGLU, grouped-query
attention) on the King James Bible, stored in bfloat16.

The bundled model came from six phases, each starting from the previous phase's weights
(runs/tiny-llama/last.pt is written every --eval-every steps; copy it before the next phase). Phases
1-3 were stopped by hand (kill) right after the checkpoint named: 1 and 2 when the induction score had
not moved (more short [EOT] R R sequences were then given), 3 once induction heads had formed (fewer
then, and more repeats across text in the windows):

    python tools/train_tiny_llama.py --minutes 75 --steps 100000 --batch 8 --synth-batch 16 --warmup 30 \
        --eval-every 100 --threads 1                                            # step 300 -> phase1.pt
    python tools/train_tiny_llama.py --init runs/tiny-llama/phase1.pt --minutes 55 --steps 100000 --batch 8 \
        --synth-batch 32 --warmup 20 --lr 1.8e-3 --seed 1 --eval-every 100 --threads 1   # step 100 -> phase2.pt
    python tools/train_tiny_llama.py --init runs/tiny-llama/phase2.pt --minutes 50 --steps 100000 --batch 8 \
        --synth-batch 72 --synth-len 64 --warmup 20 --lr 1.8e-3 --seed 2 --eval-every 50 --threads 1   # step 200 -> phase3.pt
    python tools/train_tiny_llama.py --init runs/tiny-llama/phase3.pt --minutes 32 --steps 100000 --batch 8 \
        --synth-batch 24 --synth-len 64 --p-random 0.3 --p-dense 0.1 --warmup 10 --lr 1.5e-3 --seed 3 \
        --eval-every 100 --threads 1                                            # 481 steps -> phase4.pt
    nice -n 5 python tools/train_tiny_llama.py --init runs/tiny-llama/phase4.pt --minutes 26 --steps 100000 \
        --batch 12 --synth-batch 8 --synth-len 64 --p-random 0.15 --warmup 20 --lr 1e-3 --seed 4 \
        --eval-every 100 --threads 1 --out runs/tiny-llama/phase5-export   # 1,060 steps -> phase5.pt
    nice -n 5 python tools/train_tiny_llama.py --init runs/tiny-llama/phase5.pt --minutes 70 --steps 100000 \
        --batch 12 --synth-batch 8 --synth-len 64 --p-random 0.1 --warmup 30 --lr 8e-4 --seed 5 \
        --eval-every 100 --threads 1 --out runs/tiny-llama/phase6-export  # stopped at step 500 -> phase6a.pt
    nice -n 5 python tools/train_tiny_llama.py --init runs/tiny-llama/phase6a.pt --minutes 115 --steps 100000 \
        --batch 12 --synth-batch 8 --synth-len 64 --p-random 0.1 --warmup 10 --lr 7e-4 --seed 6 \
        --eval-every 200 --threads 1 --out runs/tiny-llama/phase6-export  # -> the export
    python tools/train_tiny_llama.py --export-only      # export runs/tiny-llama/last.pt again

Phase 5 (mostly text: 12 windows and only 8 short [EOT] R R sequences per step, which keep the
induction heads) ran later on the same 2-core machine, by then nearly idle; phase 6 (the same mix, fewer
repeated random spans) in a later session: 6a was restarted after 500 steps with one longer cosine (6b),
so that the learning rate decayed once over the time left.

One torch thread: on the shared 2-core machine (load 6-11) two threads did a step in twice the wall
time of one (measured), the second thread mostly waiting for the first; nearly idle (phase 5's
settings, steps 25-50) two threads took 2.7 s a step, one 1.7 s.

With --minutes the cosine schedule follows wall-clock time, so a rerun on another machine is close to,
not bit-identical with, the bundled model; pass --steps N without --minutes for a fixed schedule.

Same data as tiny-gpt (tools/kjv_data.py: every 20th chapter held out) and the same tokenizer
(resources/models/tiny-gpt/tokenizer.json: 4,096 byte-level BPE tokens, `<|endoftext|>` = BOS = EOS), so
the two models read identical ids and their bits per character and patterns compare side by side.

The network is this project's engine (`engine.network.Transformer`); its ModelConfig is what the llama
converter reads from the very config.json this script saves (`CONVERTERS["llama"].config`), so the
two cannot disagree.

Curriculum (tiny-gpt's, from the first step): text windows [EOT] + 256 KJV tokens, of which some get a
span of random tokens (4-48) written twice at varying distances (--p-random) or a copied span of their
own text (--p-copy); every step also trains on --synth-batch short sequences [EOT] R R filler of random
tokens (R: 4 to synth_len/2 tokens; only the second copy is scored). tiny-gpt's induction heads formed
only once those short sequences were added, so here they are there from the start.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import kjv_data  # noqa: E402
from train_tiny_gpt import bits_per_char, head_scores, make_batch, sample, synthetic_batch, token_stream  # noqa: E402

from engine.checkpoints.export_hf import save_hf  # noqa: E402
from engine.checkpoints.registry import CONVERTERS  # noqa: E402
from engine.network import Transformer  # noqa: E402

log = logging.getLogger("train_tiny_llama")
EOT = "<|endoftext|>"
TOKENIZER = ROOT / "resources" / "models" / "tiny-gpt" / "tokenizer.json"


def hf_config(args: argparse.Namespace, vocab: int, eot: int) -> dict:
    """config.json of the bundled folder (LlamaForCausalLM)."""
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
            "hidden_size": args.d_model, "intermediate_size": args.d_ff, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
            "head_dim": args.d_model // args.heads, "max_position_embeddings": args.max_positions,
            "rope_theta": args.rope_theta, "rope_scaling": None, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
            "tie_word_embeddings": True, "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": None,
            "use_cache": True, "torch_dtype": "bfloat16"}


def tokenizer_config() -> dict:
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT, "unk_token": None,
            "pad_token": None, "model_max_length": 1024, "clean_up_tokenization_spaces": False}


def init_weights(net: Transformer, n_layers: int) -> None:
    """Normal(0, 0.02) matrices; the two projections back into the residual stream scaled by 1/sqrt(2 n)."""
    for name, p in net.named_parameters():
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("attn.out.weight", "ffn.down.weight")) else 0.02
            torch.nn.init.normal_(p, 0.0, std)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--run", default=str(ROOT / "runs" / "tiny-llama"))
    ap.add_argument("--out", default=str(ROOT / "resources" / "models" / "tiny-llama"))
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--d-ff", type=int, default=768, help="SwiGLU intermediate size")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--rope-theta", type=float, default=10_000.0)
    ap.add_argument("--max-positions", type=int, default=1024, help="max_position_embeddings in config.json")
    ap.add_argument("--ctx", type=int, default=256, help="training window (tokens after [EOT])")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--p-random", type=float, default=0.2, help="share of windows with a repeated random-token span")
    ap.add_argument("--p-copy", type=float, default=0.1, help="share of windows with a copied text span")
    ap.add_argument("--p-dense", type=float, default=0.0,
                    help="share of windows filled (after some text) with pairs of repeated random spans")
    ap.add_argument("--synth-batch", type=int, default=24,
                    help="per step, this many short [EOT] R R sequences of random tokens besides the text windows")
    ap.add_argument("--synth-len", type=int, default=72)
    ap.add_argument("--minutes", type=float, default=None,
                    help="wall-clock budget: the schedule runs on max(step/steps, elapsed/budget) and training stops at 1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--init", default=None, help="start from this checkpoint")
    args = ap.parse_args()
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(run / "recipe.log")])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train_txt, valid_txt = kjv_data.prepare(args.data)
    tok = Tokenizer.from_file(str(TOKENIZER))
    eot, vocab = tok.token_to_id(EOT), tok.get_vocab_size()
    hf = hf_config(args, vocab, eot)
    cfg = CONVERTERS["llama"].config(hf, set())
    net = Transformer(cfg)
    init_weights(net, args.layers)
    log.info("tiny-llama: %.2fM parameters, vocab %d, %s", sum(p.numel() for p in net.parameters()) / 1e6, vocab, cfg)
    # a quick held-out check while training: the first ~30 KB of the held-out text
    quick = run / "valid_quick.txt"
    quick.write_text("".join(valid_txt.read_text(encoding="utf-8").splitlines(keepends=True)[:220]), encoding="utf-8")

    if args.init:
        state = torch.load(args.init, weights_only=True)
        net.load_state_dict(state["model"])
        log.info("start: weights of step %d from %s", state["step"], args.init)
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
            text_loss = loss.item()
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
            if step % 25 == 0:
                log.info("step %d (%.1f%%) loss %.4f (text %.4f, smoothed %.4f) lr %.2e %.0fs", step, 100 * progress,
                         value, text_loss, smooth, lr, time.time() - t0)
            if step % args.eval_every == 0 or progress >= 1.0:
                torch.save({"step": step, "model": net.state_dict(), "seconds": time.time() - t0}, run / "last.pt")
                ind, prev = head_scores(net, cfg, eot)
                li, hi = np.unravel_index(ind.argmax(), ind.shape)
                lp, hp = np.unravel_index(prev.argmax(), prev.shape)
                bpc = bits_per_char(net, tok, quick, args.ctx, eot)
                log.info("step %d: quick held-out bits/char %.4f; best induction head L%dH%d %.3f, best previous-token "
                         "head L%dH%d %.3f", step, bpc, li, hi, ind[li, hi], lp, hp, prev[lp, hp])
                log.info("induction scores\n%s", np.array2string(ind, precision=2))
            if progress >= 1.0:
                break
        log.info("trained %d steps in %.0fs", step, time.time() - t0)
    else:
        state = torch.load(run / "last.pt", weights_only=True)
        net.load_state_dict(state["model"])
        log.info("loaded step %d (%.0fs of training) from %s", state["step"], state.get("seconds", 0), run / "last.pt")

    bpc = bits_per_char(net, tok, valid_txt, args.ctx, eot)
    log.info("held-out bits per character (float32 weights): %.4f", bpc)
    ind, prev = head_scores(net, cfg, eot)
    log.info("induction scores [layer, head]\n%s", np.array2string(ind, precision=3))
    log.info("previous-token scores [layer, head]\n%s", np.array2string(prev, precision=3))
    for prompt in ("In the beginning", "And the LORD said unto Moses,", "Blessed are the"):
        log.info("sample: %r", sample(net, tok, prompt))
    out = save_hf(net, args.out, hf, tok, dtype=torch.bfloat16)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(TOKENIZER, out / "tokenizer.json")  # byte-identical with tiny-gpt's


if __name__ == "__main__":
    main()
