#!/usr/bin/python3
"""PyTorch peer of bench_train_step: one full training step (forward, backward, clip_grad_norm_,
AdamW) of the same GPT-2 (tests/reference/torch_gpt.py) in float32 on the CPU, at a fixed thread
count. Prints one JSON object like the C++ benchmark. Run with Debian's /usr/bin/python3."""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from torch_gpt import GPT  # noqa: E402


def timed_steps(model, opt, x, y, warmup, steps):
    """Runs warmup + steps full training steps (zero_grad, forward, backward, clip_grad_norm_ 1.0,
    AdamW) on one batch; returns (median seconds of the timed steps, last loss). Also bench/ddp's
    per-rank loop (torch_ddp.py), where backward all-reduces DDP's gradient buckets."""
    times = []
    loss = None
    for s in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if s >= warmup:
            times.append(dt)
    times.sort()
    return times[len(times) // 2], loss


def main():
    ap = argparse.ArgumentParser()
    for name, default in [("vocab", 50257), ("ctx", 1024), ("layers", 12), ("heads", 12),
                          ("embd", 768), ("batch", 4), ("seq", 64), ("threads", 2),
                          ("steps", 10), ("warmup", 2)]:
        ap.add_argument("--" + name, type=int, default=default)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    cfg = dict(vocab_size=a.vocab, context_length=a.ctx, n_layer=a.layers, n_head=a.heads,
               n_embd=a.embd)
    model = GPT(cfg).float().init_gpt2_()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(42)
    x = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
    y = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
    median, loss = timed_steps(model, opt, x, y, a.warmup, a.steps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"impl": "pytorch", "tokens_per_s": round(a.batch * a.seq / median, 1),
                      "ms_per_step": round(1e3 * median, 3), "peak_rss_mb": round(rss, 1),
                      "params": sum(p.numel() for p in model.parameters()),
                      "loss": round(loss.item(), 5), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
