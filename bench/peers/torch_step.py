"""PyTorch eager peer of bench/models.ts: the same model, loss and AdamW step.

Prints one JSON object: ms/step (median), peak RSS. Run by bench/step.ts;
PyTorch is never a dependency of Lethe.
"""
import json, resource, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.d, self.h = d, d // 64
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        mask = torch.full((cfg["seq"], cfg["seq"]), float("-inf")).triu(1)
        self.register_buffer("mask", mask)

    def forward(self, x):
        b, l, d = x.shape
        h = self.layer_norm1(x)
        heads = lambda t: t.view(b, l, self.h, 64).transpose(1, 2)
        q, k, v = heads(self.q_proj(h)), heads(self.k_proj(h)), heads(self.v_proj(h))
        p = torch.softmax(q @ k.transpose(-1, -2) * 64 ** -0.5 + self.mask, dim=-1)
        x = x + self.out_proj((p @ v).transpose(1, 2).reshape(b, l, d))
        m = self.fc1(self.layer_norm2(x))
        return x + self.fc2(m * torch.sigmoid(1.702 * m))


class ConvStack(nn.Module):
    def __init__(self, c, blocks):
        super().__init__()
        self.conv_in = nn.Conv2d(4, c, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.GroupNorm(32, c), nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(32, c), nn.Conv2d(c, c, 3, padding=1)])
            for _ in range(blocks))
        self.conv_norm_out, self.conv_out = nn.GroupNorm(32, c), nn.Conv2d(c, 4, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for n1, c1, n2, c2 in self.blocks:
            h = h + c2(F.silu(n2(c1(F.silu(n1(h))))))
        return self.conv_out(F.silu(self.conv_norm_out(h)))


if cfg["kind"] == "transformer":
    model, shape = Block(cfg["width"]), (cfg["batch"], cfg["seq"], cfg["width"])
else:
    model, shape = ConvStack(cfg["channels"], cfg["blocks"]), (cfg["batch"], 4, cfg["size"], cfg["size"])
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
x, target = torch.randn(shape), torch.randn(shape)


def step():
    opt.zero_grad(set_to_none=True)
    loss = F.mse_loss(model(x), target)
    loss.backward()
    opt.step()
    return loss.item()


for _ in range(cfg["warmup"]):
    step()
times = []
for _ in range(cfg["steps"]):
    t0 = time.perf_counter()
    step()
    times.append((time.perf_counter() - t0) * 1000)
times.sort()
print(json.dumps({"ms_per_step": times[len(times) // 2], "min_ms_per_step": times[0], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch": torch.__version__}))
