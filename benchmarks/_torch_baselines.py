"""PyTorch and Opacus baselines for benchmarks/speed.py (torch is optional).

Only :func:`run_torch_config` is called from outside, and only after
:func:`torch_available` said yes; nothing here is imported by dpjax. The
models mirror the JAX ones layer for layer, so the parameter counts agree
(both are written to the JSON).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable
from typing import Any


def torch_available() -> bool:
    """True when both torch and opacus can be imported (checked without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "opacus"))


def _build_model(model: str, spec: dict[str, Any]):
    from torch import nn

    if model == "cnn":
        # The JAX DPCNN: conv1 padding 2 (13x13 after it), conv2 VALID; 26,010 params.
        return nn.Sequential(
            nn.Conv2d(1, 16, 8, 2, padding=2),
            nn.Tanh(),
            nn.MaxPool2d(2, 1),
            nn.Conv2d(16, 32, 4, 2),
            nn.Tanh(),
            nn.MaxPool2d(2, 1),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 32),
            nn.Tanh(),
            nn.Linear(32, spec["num_classes"]),
        )
    if model == "mlp":
        h, w, c = spec["input_shape"]
        layers: list[nn.Module] = [nn.Flatten()]
        width = h * w * c
        for hidden in spec["hidden"]:
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, spec["num_classes"]))
        return nn.Sequential(*layers)
    if model == "transformer":
        keys = ("vocab", "seq_len", "dim", "heads", "num_classes")
        return _transformer_class()(**{k: spec[k] for k in keys})
    raise ValueError(f"unknown model {model!r}")


def _transformer_class():
    from torch import nn

    class Transformer(nn.Module):
        """Mirror of speed.py's JAX block: embed + pos, pre-LN attention + MLP, mean-pool, head."""

        def __init__(self, vocab: int, seq_len: int, dim: int, heads: int, num_classes: int):
            super().__init__()
            self.heads = heads
            self.embed = nn.Embedding(vocab, dim)
            self.pos = nn.Embedding(
                seq_len, dim
            )  # an Embedding, not a bare Parameter: Opacus needs a layer
            self.ln1 = nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)
            self.ln2 = nn.LayerNorm(dim)
            self.fc1 = nn.Linear(dim, 4 * dim)
            self.fc2 = nn.Linear(4 * dim, dim)
            self.head = nn.Linear(dim, num_classes)

        def forward(self, tokens):
            import torch

            b, t = tokens.shape
            positions = (
                torch.arange(t, device=tokens.device).expand(b, t).contiguous()
            )  # Opacus views it
            x = self.embed(tokens) + self.pos(positions)
            q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
            split = lambda z: z.reshape(b, t, self.heads, -1).transpose(1, 2)  # noqa: E731
            att = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
            x = x + self.out(att.transpose(1, 2).reshape(b, t, -1))
            x = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x)), approximate="tanh"))
            return self.head(x.mean(dim=1))

    return Transformer


def _inputs(model: str, spec: dict[str, Any], batch_size: int, device):
    import torch

    gen = torch.Generator().manual_seed(0)
    if model == "transformer":
        x = torch.randint(0, spec["vocab"], (batch_size, spec["seq_len"]), generator=gen)
    else:
        h, w, c = spec["input_shape"]
        x = torch.randn(batch_size, c, h, w, generator=gen)
    y = torch.randint(0, spec["num_classes"], (batch_size,), generator=gen)
    return x.to(device), y.to(device)


def describe_device() -> str:
    """The torch device the benchmarks use, in words."""
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def run_torch_config(
    mode: str,
    model: str,
    spec: dict[str, Any],
    batch_size: int,
    steps: int,
    warmup: int,
    dp: dict[str, float],
    reset_peak_rss: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Times one (mode, model, batch size) in this process; returns the timing fields.

    Modes: ``non-private`` (plain backward + Adam), ``hooks`` and ``ghost``
    (Opacus ``make_private`` with that ``grad_sample_mode``). The same fixed
    batch is used on every step (data loading is not timed, as on the JAX side).
    ``reset_peak_rss`` is called once setup is done, before the first step.
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = _build_model(model, spec).to(device)
    num_params = sum(p.numel() for p in net.parameters())
    x, y = _inputs(model, spec, batch_size, device)
    optimizer = torch.optim.Adam(net.parameters(), lr=dp["learning_rate"])
    criterion = nn.CrossEntropyLoss()

    if mode != "non-private":
        import warnings

        from opacus import PrivacyEngine

        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x.cpu(), y.cpu()), batch_size=batch_size
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = PrivacyEngine()
            made = engine.make_private(
                module=net,
                optimizer=optimizer,
                criterion=criterion,
                data_loader=loader,
                noise_multiplier=dp["noise_multiplier"],
                max_grad_norm=dp["l2_norm"],
                poisson_sampling=False,  # we feed fixed batches; sampling is not what is timed
                grad_sample_mode=mode,
            )
        if mode == "ghost":
            net, optimizer, criterion, _ = made
        else:
            net, optimizer, _ = made

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(net(x), y)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if reset_peak_rss is not None:
        reset_peak_rss()
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak_device_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "max_ms": 1e3 * max(times),
        "compile_s": None,  # eager: no separate compilation
        "num_params": num_params,
        "peak_device_mb": peak_device_mb,
        "device": describe_device(),
        "versions": {"torch": torch.__version__, "opacus": __import__("opacus").__version__},
    }
