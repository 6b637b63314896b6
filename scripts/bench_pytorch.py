#!/usr/bin/env python3
"""PyTorch reference for unveil's saliency benchmark (`cargo bench --bench saliency`).

Measures what one SmoothGrad sample costs in PyTorch on the CPU: forward + guided backward
to the input of a noisy 224x224 copy of an image, processed in chunks of 4 like unveil
(`SaliencyParams { chunk: 4, noise: 0.15, .. }`):

    x = noisy chunk [b,3,224,224], requires_grad=True
    logits = model(x); logits[:, target].sum().backward(); read x.grad (summed, like unveil)

Models (float32, eval mode, every parameter requires_grad=False):
  efficientnet-lite0  the EfficientNet-Lite0 of scripts/make_fixtures.py (TF-SAME padding,
                      BN eps 1e-3) with models/efficientnet-lite0.safetensors; all 33 ReLU6
                      are make_fixtures.GuidedReLU6: forward clamp(x, 0, 6),
                      backward relu(grad) * ((x > 0) & (x < 6)).
  resnet50            torchvision.models.resnet50(weights=None), weights from
                      torch.manual_seed(0); each of its 17 nn.ReLU modules (used 49 times per
                      forward) replaced by GuidedReLU: forward relu(x),
                      backward relu(grad) * (x > 0).

Input: a fixed image drawn from torch.Generator().manual_seed(0), uniform in [-1, 1]
(the value range of unveil's EfficientNet preprocessing); SmoothGrad noise
std = 0.15 * (max - min) of that image, from a second seeded generator. The noise
generation and the gradient accumulation are inside the timed region (unveil's are too).
The cost of these ops does not depend on the pixel values, so a random image is as good
as a photo for timing. target = argmax of the clean image's logits.

Timing: one warm-up chunk, then `--samples` samples (chunks of `--chunk`, the last one
smaller when samples % 8 != 0) timed with time.perf_counter. Peak RSS is
resource.getrusage(RUSAGE_SELF).ru_maxrss after each model: it is the process's
high-water mark so far, so a later model's value is at least the earlier one's (run
`--model NAME` alone for a per-model figure).

Run (from the repo root, after scripts/setup_venv.sh):
    .venv-scripts/bin/python scripts/bench_pytorch.py [--json OUT] [--threads 2]
        [--samples 32] [--chunk 4] [--channels-last] [--model efficientnet-lite0|resnet50 ...]
Tested with CPython 3.11.7, torch 2.7.1 (CPU), torchvision 0.22.1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZE = 224
NOISE = 0.15  # unveil SaliencyParams::default().noise (fraction of the input's max - min)
SEED = 0
MODELS = ("efficientnet-lite0", "resnet50")


# ----------------------------------------------------------------------- models
class GuidedReLU(torch.autograd.Function):
    """forward: relu(x); backward: relu(grad_out) * (x > 0)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0.0)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out.clamp_min(0.0) * (x > 0).to(grad_out.dtype)


class GuidedReLUModule(nn.Module):
    calls = 0  # forward calls, for the sanity check

    def forward(self, x):
        GuidedReLUModule.calls += 1
        return GuidedReLU.apply(x)


def build_efficientnet_lite0() -> tuple[nn.Module, callable]:
    import make_fixtures as mf  # the reference EfficientNet-Lite0 (TF-SAME padding, eps 1e-3)

    model = mf.load_model()  # strict load of models/efficientnet-lite0.safetensors, eval, no grads
    model.guided = True  # every activation goes through model.act -> mf.GuidedReLU6.apply
    calls = [0]
    act = model.act

    def counting_act(x):
        calls[0] += 1
        return act(x)

    model.act = counting_act  # instance attribute shadows the method; MBConv gets it as `act`

    def guided_calls() -> int:
        n, calls[0] = calls[0], 0
        return n

    return model, guided_calls


def build_resnet50() -> tuple[nn.Module, callable]:
    import torchvision

    torch.manual_seed(SEED)
    model = torchvision.models.resnet50(weights=None)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, GuidedReLUModule())
                replaced += 1
    assert replaced == 17, replaced  # model.relu + one per Bottleneck (16)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def guided_calls() -> int:
        n, GuidedReLUModule.calls = GuidedReLUModule.calls, 0
        return n

    return model, guided_calls


BUILDERS = {"efficientnet-lite0": (build_efficientnet_lite0, 33),
            "resnet50": (build_resnet50, 49)}  # expected guided activations per forward


# ------------------------------------------------------------------------ bench
def peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / (1 << 20 if sys.platform == "darwin" else 1 << 10)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def saliency_pass(model, image, target, samples, chunk, gen,
                  memory_format=torch.contiguous_format) -> tuple[torch.Tensor, list[float]]:
    """SmoothGrad input gradient summed over `samples` noisy copies; returns (sum, chunk times)."""
    std = NOISE * float(image.max() - image.min())
    total = torch.zeros_like(image)
    times = []
    done = 0
    while done < samples:
        b = min(chunk, samples - done)
        t0 = time.perf_counter()
        noise = torch.randn((b, *image.shape[1:]), generator=gen, dtype=torch.float32)
        x = (image + std * noise).contiguous(memory_format=memory_format).requires_grad_(True)
        logits = model(x)
        logits[:, target].sum().backward()
        total += x.grad.sum(dim=0, keepdim=True)
        times.append(time.perf_counter() - t0)
        done += b
    return total, times


def bench_model(name: str, samples: int, chunk: int, channels_last: bool = False) -> dict:
    build, expected_calls = BUILDERS[name]
    model, guided_calls = build()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    for p in model.parameters():
        assert not p.requires_grad and p.dtype == torch.float32, name
    image = torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(SEED)) * 2 - 1
    with torch.no_grad():
        clean = model(image.contiguous(memory_format=fmt))
    target = int(clean.argmax(dim=1))
    assert guided_calls() == expected_calls, name

    gen = torch.Generator().manual_seed(SEED + 1)
    warm, _ = saliency_pass(model, image, target, chunk, chunk, gen, fmt)  # warm-up: one full chunk
    assert guided_calls() == expected_calls, name
    assert torch.isfinite(warm).all() and warm.abs().max() > 0, name

    t0 = time.perf_counter()
    grad_sum, times = saliency_pass(model, image, target, samples, chunk, gen, fmt)
    elapsed = time.perf_counter() - t0
    assert torch.isfinite(grad_sum).all(), name
    ms = elapsed * 1e3 / samples
    return {
        "ms_per_sample": round(ms, 3),
        "samples_per_s": round(samples / elapsed, 3),
        "samples": samples,
        "chunk": chunk,
        "memory_format": "channels_last" if channels_last else "nchw",
        "chunk_ms": [round(t * 1e3, 1) for t in times],
        "target": target,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="OUT", type=Path, help="write the results as JSON here")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--samples", type=int, default=32, help="timed samples per model (default 32)")
    ap.add_argument("--chunk", type=int, default=4, help="samples per forward/backward (default 4, as unveil)")
    ap.add_argument("--channels-last", action="store_true",
                    help="run in NHWC (torch.channels_last) instead of the default NCHW "
                         "(for curiosity; bench.sh compares NCHW)")
    ap.add_argument("--model", action="append", choices=MODELS,
                    help="only this model (repeatable; default: all)")
    args = ap.parse_args()
    if args.threads < 1 or args.samples < 1 or args.chunk < 1:
        ap.error("--threads, --samples and --chunk must be >= 1")

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)
    cpu = cpu_model()
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU: {cpu} "
          f"({len(os.sched_getaffinity(0))} usable cores), "
          f"{args.samples} samples in chunks of {args.chunk}"
          f"{', channels_last' if args.channels_last else ''}", flush=True)

    results = {}
    for name in args.model or MODELS:
        results[name] = bench_model(name, args.samples, args.chunk, args.channels_last)
        r = results[name]
        print(f"  {name}: {r['ms_per_sample']:.1f} ms/sample (chunks: "
              f"{', '.join(f'{t:.0f}' for t in r['chunk_ms'])} ms)", flush=True)

    print("\n| model | samples | ms per sample | samples/s | peak RSS (MiB) |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['samples']} | {r['ms_per_sample']:.1f} | {r['samples_per_s']:.2f} "
              f"| {r['peak_rss_mib']:.0f} |")

    if args.json:
        out = {
            "torch": torch.__version__,
            "threads": args.threads,
            "cpu": cpu,
            "python": platform.python_version(),
            "dtype": "float32",
            "input": f"1x3x{SIZE}x{SIZE} uniform[-1,1] (seed {SEED}) + N(0, ({NOISE}*range)^2) noise",
            "models": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
