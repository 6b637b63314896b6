#!/usr/bin/env python3
"""PyTorch reference for unveil's saliency benchmark (`cargo bench --bench saliency`).

Measures what one SmoothGrad sample costs in PyTorch, on the CPU (default) or on a CUDA
GPU (`--device cuda`): forward + guided (vanilla where the model has no ReLU) backward to the input of a noisy copy of an image,
processed in chunks of 4 like unveil (`SaliencyParams { chunk: 4, noise: 0.15, .. }`):

    x = noisy chunk [b,3,S,S], requires_grad=True
    logits = model(x); logits[:, target].sum().backward(); read x.grad (summed, like unveil)

Models (float32, eval mode, every parameter requires_grad=False):
  efficientnet-lite0  S = 224. The EfficientNet-Lite0 of scripts/fixtures/make_fixtures.py
                      (TF-SAME padding, BN eps 1e-3) with models/efficientnet-lite0.safetensors; all 33
                      ReLU6 are make_fixtures.GuidedReLU6: forward clamp(x, 0, 6),
                      backward relu(grad) * ((x > 0) & (x < 6)).
  resnet50            S = 224. torchvision.models.resnet50(weights=None), weights from
                      torch.manual_seed(0); each of its 17 nn.ReLU modules (used 49 times per
                      forward) replaced by GuidedReLU: forward relu(x),
                      backward relu(grad) * (x > 0). Without torchvision (or with
                      --no-torchvision): the identical ResNet-50 of
                      scripts/fixtures/torch_models.py (same modules, init order and seed, hence
                      bit-identical weights;
                      `python scripts/fixtures/torch_models.py` checks this against torchvision).
  xception            S = 150. The chest X-ray Xception
                      (scripts/fetch/pneumonia-xception-architecture.md: Keras Xception backbone
                      + GAP + Dense(128, relu) + Dense(2)), scripts/fixtures/torch_models.py's
                      port (same graph as the XceptionPort of
                      scripts/fixtures/make_pneumonia_fixtures.py, which needs Keras). Seeded
                      random weights: torch.manual_seed(0), Keras' default initialisers (glorot
                      uniform kernels, zero biases), BatchNorm the identity (gamma 1, beta 0,
                      running mean 0, var 1). Its 36 ReLUs (35 in the backbone + the Dense(128)
                      one) are all GuidedReLU. The trained weights are not needed: PyTorch's
                      dense kernels cost the same whatever the weight values (no sparsity
                      shortcuts), so seeded weights give the same time.
  densenet121         S = 224. CheXNet's shape: torchvision.models.densenet121(weights=None,
                      num_classes=14), torch.manual_seed(0) init; its 120 nn.ReLU modules are
                      GuidedReLU (the functional F.relu after norm5 stays plain). unveil's
                      densenet121 row seeds the same tensor shapes (benches/saliency.rs).
  vit_b_16,           S = 224. torchvision.models.vit_b_16 / convnext_tiny(weights=None),
  convnext_tiny       weights from torch.manual_seed(0), ViT's zero-initialised head re-drawn
                      (export_bench_onnx.seeded_torchvision: the graphs of
                      scripts/bench/export_bench_onnx.py that unveil's onnx-vit_b_16 and
                      onnx-convnext_tiny rows run). GELU only, no ReLU: the backward is the
                      plain (vanilla) gradient, as unveil's rows use.

Input: a fixed image drawn from torch.Generator().manual_seed(0) on the CPU (the same pixels
on every device), uniform in [-1, 1] (the value range of unveil's EfficientNet and Xception
preprocessing); SmoothGrad noise std = 0.15 * (max - min) of that image, from a second
seeded generator (torch.Generator(device=...) on the run's device). The noise generation and
the gradient accumulation are inside the timed region (unveil's are too). The cost of these
ops does not depend on the pixel values, so a random image is as good as a photo for timing.
target = argmax of the clean image's logits.

Timing: one warm-up pass of one full chunk (`--chunk` samples), then `--samples` samples
(chunks of `--chunk`, the last one smaller when samples % chunk != 0) timed with
time.perf_counter. Peak RSS is resource.getrusage(RUSAGE_SELF).ru_maxrss after each model:
it is the process's high-water mark so far, so a later model's value is at least the earlier
one's (run `--model NAME` alone for a per-model figure).

On CUDA (`--device cuda`): model, image, noise (seeded torch.Generator(device="cuda")) and
the running gradient sum all stay on the GPU; torch.cuda.synchronize() is called before the
clock is read at both ends of the timed region, and the summed gradient is copied back to
the host inside it (unveil reads its map back too). Per-chunk times come from CUDA events
(no extra synchronisation between chunks). Strict fp32: TF32 is switched off for matmuls and
cuDNN convolutions (torch.backends.cuda.matmul.allow_tf32 = False,
torch.backends.cudnn.allow_tf32 = False), so PyTorch does the same fp32 arithmetic as
unveil's fp32 kernels; with TF32 on, PyTorch would be faster but less exact. cudnn.benchmark
stays False (PyTorch's default) unless --cudnn-benchmark; with it, a last chunk smaller
than --chunk is a new shape and gets autotuned inside the timed region (use samples that
are a multiple of chunk, e.g. --samples 25 --chunk 25). --threads applies to the CPU only.
The JSON then also records the CUDA version, GPU name, cuDNN version and the peak CUDA
memory allocated per model (torch.cuda.max_memory_allocated).

Run (from the repo root, after scripts/setup_venv.sh):
    .venv-scripts/bin/python scripts/bench/bench_pytorch.py [--json OUT] [--threads 2]
        [--samples 32] [--chunk 4] [--channels-last] [--device cpu|cuda] [--cudnn-benchmark]
        [--no-torchvision] [--model efficientnet-lite0|resnet50|xception|densenet121|vit_b_16|convnext_tiny ...]
Exit status 2 (with a one-line message) for bad arguments or --device cuda without a GPU.
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "fixtures"))  # make_fixtures, torch_models

SIZE = 224
NOISE = 0.15  # unveil SaliencyParams::default().noise (fraction of the input's max - min)
SEED = 0
MODELS = ("efficientnet-lite0", "resnet50", "xception", "densenet121", "vit_b_16", "convnext_tiny")


def fail(msg: str, code: int = 2) -> None:
    print(f"bench_pytorch.py: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


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


def guided_module_calls() -> int:
    n, GuidedReLUModule.calls = GuidedReLUModule.calls, 0
    return n


def guide_relus(model: nn.Module, expected: int) -> nn.Module:
    """Replace every nn.ReLU module by a GuidedReLUModule; eval mode, no parameter grads."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, GuidedReLUModule())
                replaced += 1
    assert replaced == expected, replaced
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    GuidedReLUModule.calls = 0  # the counter is shared: drop an earlier model's timed calls
    return model


def build_efficientnet_lite0(no_torchvision: bool = False) -> tuple[nn.Module, callable, str]:
    try:
        import make_fixtures as mf  # the reference EfficientNet-Lite0 (TF-SAME padding, eps 1e-3)
    except ImportError as e:
        fail(f"efficientnet-lite0 needs scripts/fixtures/make_fixtures.py's imports ({e}); "
             "pick other models with --model resnet50 --model xception")

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

    return model, guided_calls, "scripts/fixtures/make_fixtures.py + models/efficientnet-lite0.safetensors"


def build_resnet50(no_torchvision: bool = False) -> tuple[nn.Module, callable, str]:
    tv = None
    if not no_torchvision:
        try:
            import torchvision as tv
        except ImportError:
            tv = None
    torch.manual_seed(SEED)
    if tv is not None:
        model, impl = tv.models.resnet50(weights=None), f"torchvision {tv.__version__}"
    else:
        import torch_models

        model, impl = torch_models.resnet50(), "scripts/fixtures/torch_models.py (torchvision-identical)"
    # model.relu + one per Bottleneck (16)
    return guide_relus(model, 17), guided_module_calls, impl


def build_densenet121(no_torchvision: bool = False) -> tuple[nn.Module, callable, str]:
    """CheXNet's shape: torchvision's DenseNet-121 with 14 outputs, torch.manual_seed(SEED)
    init (benches/saliency.rs seeds the same shapes)."""
    try:
        import torchvision as tv
    except ImportError:
        fail("densenet121 needs torchvision")
    torch.manual_seed(SEED)
    model = tv.models.densenet121(weights=None, num_classes=14)
    # relu0 + two per dense layer (58) + one per transition (3); the functional F.relu after
    # norm5 stays plain (negligible time)
    return guide_relus(model, 120), guided_module_calls, f"torchvision {tv.__version__}, 14 outputs"


def build_torchvision_gelu(name: str) -> tuple[nn.Module, callable, str]:
    """torchvision `name` (GELU throughout, no ReLU: vanilla gradients), torch.manual_seed(0)
    random init, as scripts/bench/export_bench_onnx.py exports it for unveil's ONNX rows."""
    try:
        import torchvision as tv
    except ImportError:
        fail(f"{name} needs torchvision")
    sys.path.insert(0, str(REPO / "scripts" / "bench"))
    from export_bench_onnx import seeded_torchvision

    model = seeded_torchvision(name)
    return guide_relus(model, 0), guided_module_calls, f"torchvision {tv.__version__}, seeded init"


def build_xception(no_torchvision: bool = False) -> tuple[nn.Module, callable, str]:
    import torch_models

    torch.manual_seed(SEED)
    model = torch_models.xception()  # 36 separate nn.ReLU modules, one call each
    return guide_relus(model, 36), guided_module_calls, "scripts/fixtures/torch_models.py (seeded Keras init)"


# name -> (builder, guided activations per forward, input size)
BUILDERS = {"efficientnet-lite0": (build_efficientnet_lite0, 33, SIZE),
            "resnet50": (build_resnet50, 49, SIZE),
            "xception": (build_xception, 36, 150),
            "densenet121": (build_densenet121, 120, SIZE),
            "vit_b_16": (lambda _nt=False: build_torchvision_gelu("vit_b_16"), 0, SIZE),
            "convnext_tiny": (lambda _nt=False: build_torchvision_gelu("convnext_tiny"), 0, SIZE)}


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
                  memory_format=torch.contiguous_format) -> tuple[torch.Tensor, callable]:
    """SmoothGrad input gradient summed over `samples` noisy copies, on image.device.
    Returns (sum, chunk_times): chunk_times() gives the chunk times in s. On CUDA they come
    from CUDA events (no synchronisation between chunks), so call it only after a sync."""
    cuda = image.device.type == "cuda"
    std = NOISE * float(image.max() - image.min())
    total = torch.zeros_like(image)
    times, events = [], []
    if cuda:
        events.append(torch.cuda.Event(enable_timing=True))
        events[-1].record()
    done = 0
    while done < samples:
        b = min(chunk, samples - done)
        t0 = time.perf_counter()
        noise = torch.randn((b, *image.shape[1:]), generator=gen, dtype=torch.float32, device=image.device)
        x = (image + std * noise).contiguous(memory_format=memory_format).requires_grad_(True)
        logits = model(x)
        logits[:, target].sum().backward()
        total += x.grad.sum(dim=0, keepdim=True)
        if cuda:
            events.append(torch.cuda.Event(enable_timing=True))
            events[-1].record()
        else:
            times.append(time.perf_counter() - t0)
        done += b

    def chunk_times() -> list[float]:
        if cuda:
            return [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])]
        return times

    return total, chunk_times


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(name: str, samples: int, chunk: int, channels_last: bool = False,
                device: str | torch.device = "cpu", no_torchvision: bool = False) -> dict:
    device = torch.device(device)
    build, expected_calls, size = BUILDERS[name]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, guided_calls, impl = build(no_torchvision)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device)
    model.to(memory_format=fmt)
    for p in model.parameters():
        assert not p.requires_grad and p.dtype == torch.float32 and p.device.type == device.type, name
    # the same pixels on every device: drawn on the CPU, then moved
    image = (torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(SEED)) * 2 - 1).to(device)
    with torch.no_grad():
        clean = model(image.contiguous(memory_format=fmt))
    target = int(clean.argmax(dim=1))
    assert guided_calls() == expected_calls, name

    gen = torch.Generator(device=device).manual_seed(SEED + 1)
    warm, _ = saliency_pass(model, image, target, chunk, chunk, gen, fmt)  # warm-up: one full chunk
    assert guided_calls() == expected_calls, name
    assert torch.isfinite(warm).all() and warm.abs().max() > 0, name

    sync(device)
    t0 = time.perf_counter()
    grad_sum, chunk_times = saliency_pass(model, image, target, samples, chunk, gen, fmt)
    grad_sum = grad_sum.cpu()  # read the map back (a no-op on the CPU; unveil reads its map too)
    sync(device)
    elapsed = time.perf_counter() - t0
    times = chunk_times()
    assert torch.isfinite(grad_sum).all(), name
    ms = elapsed * 1e3 / samples
    r = {
        "ms_per_sample": round(ms, 3),
        "samples_per_s": round(samples / elapsed, 3),
        "samples": samples,
        "chunk": chunk,
        "input_size": size,
        "memory_format": "channels_last" if channels_last else "nchw",
        "chunk_ms": [round(t * 1e3, 1) for t in times],
        "target": target,
        "guided_relus_per_forward": expected_calls,
        "parameters": sum(p.numel() for p in model.parameters()),
        "impl": impl,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    if device.type == "cuda":
        r["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / (1 << 20), 1)
    del model, image, clean, warm
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return r


def cuda_unavailable_reason() -> str:
    built = torch.version.cuda
    if not built:
        return (f"CUDA is not available to this PyTorch (torch {torch.__version__}, a CPU-only build: "
                "install a CUDA build of torch)")
    return (f"CUDA is not available to this PyTorch (torch {torch.__version__}, built for CUDA {built}): "
            f"torch.cuda.device_count() = {torch.cuda.device_count()} (no GPU visible, or no usable NVIDIA "
            "driver; check nvidia-smi and CUDA_VISIBLE_DEVICES)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="OUT", type=Path, help="write the results as JSON here")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where to run (default cpu); cuda: fp32 with TF32 off, synchronised timing")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads, CPU only (default 2; ignored with --device cuda)")
    ap.add_argument("--samples", type=int, default=32, help="timed samples per model (default 32)")
    ap.add_argument("--chunk", type=int, default=4, help="samples per forward/backward (default 4, as unveil)")
    ap.add_argument("--channels-last", action="store_true",
                    help="run in NHWC (torch.channels_last) instead of the default NCHW "
                         "(for curiosity; bench.sh compares NCHW)")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark = True (default False, PyTorch's default)")
    ap.add_argument("--no-torchvision", action="store_true",
                    help="build ResNet-50 from scripts/fixtures/torch_models.py even if torchvision is installed")
    ap.add_argument("--model", action="append", choices=MODELS,
                    help="only this model (repeatable; default: all)")
    args = ap.parse_args()
    if (args.threads is not None and args.threads < 1) or args.samples < 1 or args.chunk < 1:
        ap.error("--threads, --samples and --chunk must be >= 1")

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        fail(cuda_unavailable_reason())
    if cuda:
        if args.threads is not None:
            print("note: --threads applies to the CPU only; ignored with --device cuda", flush=True)
        torch.backends.cuda.matmul.allow_tf32 = False  # strict fp32, like unveil
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        threads = torch.get_num_threads()
    else:
        threads = 2 if args.threads is None else args.threads
        torch.set_num_threads(threads)
    torch.set_grad_enabled(True)
    cpu = cpu_model()
    where = (f"GPU: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, cuDNN "
             f"{torch.backends.cudnn.version()}, fp32, TF32 off, cudnn.benchmark {args.cudnn_benchmark})"
             if cuda else
             f"{threads} thread(s), CPU: {cpu} ({len(os.sched_getaffinity(0))} usable cores)")
    print(f"torch {torch.__version__}, {where}, "
          f"{args.samples} samples in chunks of {args.chunk}"
          f"{', channels_last' if args.channels_last else ''}", flush=True)

    results = {}
    for name in args.model or MODELS:
        results[name] = bench_model(name, args.samples, args.chunk, args.channels_last,
                                    args.device, args.no_torchvision)
        r = results[name]
        print(f"  {name} ({r['input_size']}x{r['input_size']}, {r['impl']}): {r['ms_per_sample']:.1f} ms/sample "
              f"(chunks: {', '.join(f'{t:.0f}' for t in r['chunk_ms'])} ms)", flush=True)

    mem = "peak CUDA (MiB)" if cuda else "peak RSS (MiB)"
    print(f"\n| model | samples | ms per sample | samples/s | {mem} |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['samples']} | {r['ms_per_sample']:.1f} | {r['samples_per_s']:.2f} "
              f"| {r['peak_cuda_mib' if cuda else 'peak_rss_mib']:.0f} |")

    if args.json:
        out = {
            "torch": torch.__version__,
            "device": args.device,
            "threads": threads,
            "cpu": cpu,
            "python": platform.python_version(),
            "dtype": "float32",
            "input": f"1x3xSxS (S = {SIZE}; 150 for xception) uniform[-1,1] (seed {SEED}) "
                     f"+ N(0, ({NOISE}*range)^2) noise",
            "models": results,
        }
        if cuda:
            out.update({
                "cuda": torch.version.cuda,
                "gpu": torch.cuda.get_device_name(),
                "cudnn": torch.backends.cudnn.version(),
                "tf32": False,
                "cudnn_benchmark": args.cudnn_benchmark,
            })
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
