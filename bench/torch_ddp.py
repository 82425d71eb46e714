#!/usr/bin/python3
"""PyTorch peer of Cohort's data-parallel training for bench/ddp: one rank of
torch.nn.parallel.DistributedDataParallel (gloo backend, CPU, fp32) training the same GPT-2
(tests/reference/torch_gpt.py) with AdamW and clip_grad_norm_, at a fixed thread count.

Started once per rank by bench/ddp with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set.
Rank 0 prints one JSON object: global tokens/s from the median step time."""
import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from torch_gpt import GPT  # noqa: E402
from torch_train_step import timed_steps  # noqa: E402  (this script's directory is on sys.path)


def main():
    ap = argparse.ArgumentParser()
    for name, default in [("vocab", 257), ("ctx", 128), ("layers", 4), ("heads", 4),
                          ("embd", 128), ("batch", 16), ("seq", 128), ("threads", 1),
                          ("steps", 10), ("warmup", 2), ("bucket_mb", 25)]:
        ap.add_argument("--" + name, type=int, default=default)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1)
    cfg = dict(vocab_size=a.vocab, context_length=a.ctx, n_layer=a.layers, n_head=a.heads,
               n_embd=a.embd)
    model = DDP(GPT(cfg).float().init_gpt2_(), bucket_cap_mb=a.bucket_mb)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(42 + rank)
    x = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
    y = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
    median, _ = timed_steps(model, opt, x, y, a.warmup, a.steps)
    if rank == 0:
        print(json.dumps({"impl": "pytorch-ddp-gloo", "ranks": world,
                          "tokens_per_s": round(world * a.batch * a.seq / median, 1),
                          "ms_per_step": round(1e3 * median, 3),
                          "params": sum(p.numel() for p in model.parameters()),
                          "torch": torch.__version__}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
