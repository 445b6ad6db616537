"""How close to this CPU's limit training and Hessian products run: every paper model against the
machine's own fp32 GEMM peak, measured in the same run.

Usage::

    python benchmarks/cpu.py                       # M1, C1, C2, C3 at B = 16, 128, 512, 2048
    python benchmarks/cpu.py --models C1 --batch-sizes 128 --no-compile

Prints the CPU model, torch version and thread count, then Markdown tables:

1. The fp32 GEMM peak: the best of ``--repeats`` 2048 x 2048 x 2048 products (GFLOP/s).
2. One training step (forward, cross-entropy, backward, SGD with momentum) on random inputs in
   [0, 1]: ms per step (median of ``--repeats`` after two warm-ups), GFLOP/s (the step's FLOPs
   by ``torch.utils.flop_counter``) and share of the GEMM peak, *before* (NCHW, as every run was
   trained until channels-last was measured) and *after* (the layout ``hessbatch.fastpath`` picks,
   as ``hessbatch train`` runs now), and with the model under ``torch.compile`` (its compile time
   apart; ``hessbatch train`` compiles only models with batch norm at B >= 512: see
   book/benchmarks.md).
3. A Hessian-vector product per sample, against a gradient per sample on the same chunk: cost
   ratio, with the gradient graph rebuilt each product (uncached) and cached
   (``HessianOperator``'s default where memory allows), in each layout; and what summing the
   chunks in float64 (``hessian.VECTOR_DTYPE``) costs against float32 sums.
4. Samples per pass (``--chunks``): µs per sample of an evaluation forward pass and an input
   gradient (FGSM's pass) in the fast layout, and of a cached Hessian-vector product in NCHW (the
   layouts measurements use), for each chunk size: what ``hessbatch.evaluation.pass_chunk`` is
   chosen by.

``--parts`` picks the tables (default: all); ``OMP_NUM_THREADS=1`` measures one thread, as the
long CPU runs use.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hessbatch import fastpath, hessian, models
from hessbatch.devices import cpu_model
from hessbatch.hessian import HessianOperator

SHAPES = {"M1": (1, 28, 28), "C1": (3, 32, 32), "C2": (3, 32, 32), "C3": (3, 32, 32)}


def gemm_peak(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _model(name, fmt):
    torch.manual_seed(0)
    c = SHAPES[name][0]
    return models.build_model(name, SHAPES[name], 10, (0.5,) * c, (0.25,) * c).to(memory_format=fmt)


def _batch(name, b):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, *SHAPES[name], generator=g), torch.randint(0, 10, (b,), generator=g)


def train_step(name: str, b: int, fmt, repeats: int, compile_: bool = False) -> dict:
    """ms per step, GFLOP/s and (compiled) compile seconds of one SGD step."""
    model = _model(name, fmt)
    net = torch.compile(model) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = _batch(name, b)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    first = _timed(step)
    with FlopCounterMode(display=False) as fc:
        step()
    step()
    ms = statistics.median(_timed(step) for _ in range(repeats)) * 1e3
    return {"ms": ms, "gflops": fc.get_total_flops() / ms / 1e6, "compile_s": first}


def hvp_cost(name: str, fmt, samples: int, repeats: int) -> dict:
    """Seconds per sample of a gradient and of a Hessian-vector product on one chunk of ``samples``."""
    model = _model(name, fmt).eval()
    x, y = _batch(name, samples)
    params = [p for p in model.parameters()]

    def grad():
        torch.autograd.grad(F.cross_entropy(model(x), y), params)

    out = {"grad": statistics.median(_timed(grad) for _ in range(repeats)) / samples}
    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for label, cache in (("uncached", False), ("cached", True)):
        op = HessianOperator(model, (x, y), chunk=samples, cache_graph=cache)
        op.matvec(v)
        out[label] = statistics.median(_timed(lambda: op.matvec(v)) for _ in range(repeats)) / samples
    saved = hessian.VECTOR_DTYPE
    try:
        hessian.VECTOR_DTYPE = torch.float32
        op = HessianOperator(model, (x, y), chunk=samples // 4, cache_graph=False)
        op.matvec(v)
        f32 = statistics.median(_timed(lambda: op.matvec(v)) for _ in range(repeats))
    finally:
        hessian.VECTOR_DTYPE = saved
    op = HessianOperator(model, (x, y), chunk=samples // 4, cache_graph=False)
    op.matvec(v)
    f64 = statistics.median(_timed(lambda: op.matvec(v)) for _ in range(repeats))
    out["f64_extra"] = f64 / f32 - 1
    return out


def per_sample(name: str, chunks, samples: int, repeats: int) -> dict:
    """µs per sample of an eval forward pass, an input gradient (fast layout) and a cached
    Hessian-vector product (NCHW) over ``samples`` inputs, in chunks of each size."""
    fast = _model(name, torch.contiguous_format)
    fast = _model(name, fastpath.memory_format(fast, "cpu")).eval()
    plain = _model(name, torch.contiguous_format).eval()
    x, y = _batch(name, samples)
    v = torch.randn(sum(p.numel() for p in plain.parameters()), generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    out = {}
    for c in chunks:
        parts = [(x[i:i + c], y[i:i + c]) for i in range(0, samples, c)]

        def forward():
            with torch.no_grad():
                for xb, _ in parts:
                    fast(xb)

        def input_grad():
            for xb, yb in parts:
                xb = xb.clone().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(fast(xb), yb, reduction="sum"), xb)

        op = HessianOperator(plain, (x, y), chunk=c, cache_graph=True)
        op.matvec(v)
        for label, fn in (("forward", forward), ("input gradient", input_grad), ("HVP", lambda: op.matvec(v))):
            fn()
            out[label, c] = statistics.median(_timed(fn) for _ in range(repeats)) / samples * 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 128, 512, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hvp-samples", type=int, default=256)
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile columns")
    ap.add_argument("--parts", nargs="+", default=["train", "hvp", "chunks"], choices=["train", "hvp", "chunks"])
    ap.add_argument("--chunks", nargs="+", type=int, default=[16, 32, 64, 128, 256, 1024])
    ap.add_argument("--chunk-samples", type=int, default=1024)
    a = ap.parse_args()
    print(f"CPU: {cpu_model()}; {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"capability {torch.backends.cpu.get_cpu_capability()}; {time.strftime('%Y-%m-%d')}\n")
    peak = gemm_peak()
    print(f"fp32 GEMM peak (2048³): {peak:.0f} GFLOP/s\n")
    if "train" in a.parts:
        train_table(a, peak)
    if "hvp" in a.parts:
        hvp_table(a)
    if "chunks" in a.parts:
        chunk_table(a)


def train_table(a, peak: float) -> None:
    share = lambda g: f"{100 * g / peak:.0f} %"  # noqa: E731
    head = "| model | B | before: NCHW ms | GFLOP/s | of peak | after: fast path ms | GFLOP/s | of peak |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if not a.no_compile:
        head += " compiled ms | of peak | compile s |"
        rule += "---:|---:|---:|"
    print("Training step (forward, backward, SGD with momentum), fp32\n\n" + head + "\n" + rule)
    for name in a.models:
        fmt = fastpath.memory_format(_model(name, torch.contiguous_format), "cpu")
        for b in a.batch_sizes:
            before = train_step(name, b, torch.contiguous_format, a.repeats)
            after = train_step(name, b, fmt, a.repeats)
            row = (f"| {name} | {b} | {before['ms']:.1f} | {before['gflops']:.0f} | {share(before['gflops'])} "
                   f"| {after['ms']:.1f} | {after['gflops']:.0f} | {share(after['gflops'])} |")
            if not a.no_compile:
                torch._dynamo.reset()
                comp = train_step(name, b, fmt, a.repeats, compile_=True)
                row += f" {comp['ms']:.1f} | {share(comp['gflops'])} | {comp['compile_s']:.0f} |"
            print(row, flush=True)


def hvp_table(a) -> None:
    print(f"\nHessian-vector product per sample (one chunk of {a.hvp_samples} random inputs, eval mode), "
          "as a multiple of a gradient per sample\n\n| model | layout | gradient µs/sample | HVP uncached × | "
          "HVP cached × | float64 sums: extra time |\n|---|---|---:|---:|---:|---:|")
    for name in a.models:
        fast = fastpath.memory_format(_model(name, torch.contiguous_format), "cpu")
        for fmt in dict.fromkeys([torch.contiguous_format, fast]):
            h = hvp_cost(name, fmt, a.hvp_samples, a.repeats)
            print(f"| {name} | {fastpath.format_name(fmt)} | {h['grad'] * 1e6:.0f} | {h['uncached'] / h['grad']:.2f} "
                  f"| {h['cached'] / h['grad']:.2f} | {100 * h['f64_extra']:+.1f} % |", flush=True)


def chunk_table(a) -> None:
    print(f"\nSamples per pass: µs per sample over {a.chunk_samples} random inputs, by chunk size\n\n"
          "| model | pass | " + " | ".join(f"chunk {c}" for c in a.chunks) + " |\n|---|---|"
          + "---:|" * len(a.chunks))
    for name in a.models:
        t = per_sample(name, a.chunks, a.chunk_samples, a.repeats)
        for label in ("forward", "input gradient", "HVP"):
            print(f"| {name} | {label} | " + " | ".join(f"{t[label, c]:.0f}" for c in a.chunks) + " |", flush=True)


if __name__ == "__main__":
    main()
