#!/usr/bin/python3
"""bench/torch_save.py TABLE_JSON DIR REPS: torch.save of the same tensors Cohort checkpoints (the
model's weights and AdamW's two moments, float32, shapes from `bench_checkpoint --mode table`),
each file fsynced as Cohort's are. Prints the median seconds per save as JSON."""
import json, os, statistics, sys, time
import torch

table = json.load(open(sys.argv[1]))["tensors"]
out, reps = sys.argv[2], int(sys.argv[3])
state = {}
for prefix in ("model", "adam_m", "adam_v"):
    for t in table:
        state[f"{prefix}.{t['name']}"] = torch.randn(*t["shape"], dtype=torch.float32)
times = []
for r in range(reps + 1):
    path = os.path.join(out, f"torch-{r}.pt")
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if r > 0:
        times.append(time.perf_counter() - t0)
    os.remove(path)
print(json.dumps({"torch_save_s": statistics.median(times)}))
