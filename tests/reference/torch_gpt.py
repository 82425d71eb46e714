#!/usr/bin/python3
"""PyTorch reference for Cohort's GPT-2 (tests/unit/gpt_test.cc runs it; run with Debian's
/usr/bin/python3, which has python3-torch).

Usage: torch_gpt.py DIR

DIR holds what the C++ test wrote (all little-endian, flat, in Cohort's parameter layout):
  config.txt   "key value" lines: vocab_size context_length n_layer n_head n_embd B T steps
               lr beta1 beta2 eps weight_decay max_norm
  tensors.txt  one line per parameter tensor: name offset numel decay(0/1) dim0 [dim1]
  params.bin   float32 [num_params]   initial parameters
  inputs.bin   int32 [B*T]            token ids
  targets.bin  int32 [B*T]            next-token targets

For each step s in 0..steps-1 (same batch every step) it writes:
  loss_<s>.bin [1], logits_<s>.bin [B*T*V], grads_<s>.bin [num_params] (Cohort layout),
  norm_<s>.bin [1] (pre-clip global grad norm), params_<s+1>.bin [num_params] (after the
  clip_grad_norm_ + torch.optim.AdamW step).
Everything runs in float32. Exit status 3 means torch is not importable.
"""
import math
import os
import sys

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover
    print(f"torch_gpt.py: cannot import torch/numpy ({e}); install Debian's python3-torch "
          f"(apt-get install python3-torch) for /usr/bin/python3", file=sys.stderr)
    sys.exit(3)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.size()
        H = self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, H, C // H).transpose(1, 2)
        k = k.view(B, T, H, C // H).transpose(1, 2)
        v = v.view(B, T, H, C // H).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["n_embd"]
        self.wte = nn.Embedding(cfg["vocab_size"], C)
        self.wpe = nn.Embedding(cfg["context_length"], C)
        self.h = nn.ModuleList([Block(C, cfg["n_head"]) for _ in range(cfg["n_layer"])])
        self.ln_f = nn.LayerNorm(C)

    def init_gpt2_(self, seed=1):
        """GPT-2 initialization, as Cohort's Gpt::InitWeights (distribution, not values): weights
        N(0, 0.02), the c_proj weights N(0, 0.02 / sqrt(2 * n_layer)), biases 0, LayerNorm 1/0.
        The gradient test loads Cohort's own parameters instead; benchmarks use this so the peer
        trains a sensibly initialized model (PyTorch's defaults give a loss in the hundreds)."""
        g = torch.Generator().manual_seed(seed)
        proj_std = 0.02 / math.sqrt(2 * len(self.h))
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif ".ln_" in name or name.startswith("ln_"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, proj_std if name.endswith("c_proj.weight") else 0.02, generator=g)
        return self

    def forward(self, idx, targets):
        B, T = idx.size()
        pos = torch.arange(T, dtype=torch.long)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied head
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = sys.argv[1]
    cfg = {}
    with open(os.path.join(d, "config.txt")) as f:
        for line in f:
            if line.strip():
                key, value = line.split()
                cfg[key] = float(value) if any(c in value for c in ".e") else int(value)
    tensors = []
    with open(os.path.join(d, "tensors.txt")) as f:
        for line in f:
            parts = line.split()
            if parts:
                tensors.append((parts[0], int(parts[1]), int(parts[2]), parts[3] == "1",
                                [int(x) for x in parts[4:]]))
    flat = np.fromfile(os.path.join(d, "params.bin"), dtype="<f4")
    B, T = cfg["B"], cfg["T"]
    inputs = torch.from_numpy(np.fromfile(os.path.join(d, "inputs.bin"), dtype="<i4")
                              .astype(np.int64).reshape(B, T))
    targets = torch.from_numpy(np.fromfile(os.path.join(d, "targets.bin"), dtype="<i4")
                               .astype(np.int64).reshape(B, T))

    torch.manual_seed(0)
    model = GPT(cfg).float()
    params = dict(model.named_parameters())
    if set(params) != {t[0] for t in tensors}:
        print(f"parameter names differ: torch-only {sorted(set(params) - {t[0] for t in tensors})}, "
              f"cohort-only {sorted({t[0] for t in tensors} - set(params))}", file=sys.stderr)
        return 1
    with torch.no_grad():
        for name, offset, numel, _, shape in tensors:
            p = params[name]
            if list(p.shape) != shape:
                print(f"{name}: torch shape {list(p.shape)} != cohort {shape}", file=sys.stderr)
                return 1
            p.copy_(torch.from_numpy(flat[offset:offset + numel].reshape(shape)))

    decay = [params[t[0]] for t in tensors if t[3]]
    no_decay = [params[t[0]] for t in tensors if not t[3]]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])

    def write_flat(path, get):
        out = np.zeros(flat.size, dtype="<f4")
        for name, offset, numel, _, _ in tensors:
            out[offset:offset + numel] = get(params[name]).detach().numpy().reshape(-1)
        out.tofile(path)

    for s in range(cfg["steps"]):
        opt.zero_grad(set_to_none=False)
        logits, loss = model(inputs, targets)
        loss.backward()
        np.array([loss.item()], dtype="<f4").tofile(os.path.join(d, f"loss_{s}.bin"))
        logits.detach().numpy().astype("<f4").tofile(os.path.join(d, f"logits_{s}.bin"))
        write_flat(os.path.join(d, f"grads_{s}.bin"), lambda p: p.grad)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_norm"])
        np.array([norm.item()], dtype="<f4").tofile(os.path.join(d, f"norm_{s}.bin"))
        opt.step()
        write_flat(os.path.join(d, f"params_{s + 1}.bin"), lambda p: p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
