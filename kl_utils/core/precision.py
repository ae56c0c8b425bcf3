"""The arithmetic a training stage uses on this host: `mixed_precision` (no | bf16 | auto) resolved
to what runs, whether the device has native bf16, and the one warning line for bf16 without it.

Decisions:
* Native bf16 on a CPU means the `avx512_bf16` or `amx_bf16` instructions (/proc/cpuinfo), and
  oneDNN allowed to use them (`ONEDNN_MAX_CPU_ISA`, when set, at AVX512_CORE_BF16 or above).
  Without them torch 2.13 runs bf16 matrix multiplies through a scalar fallback: 1-2 GFLOPS
  against 70-90 GFLOPS in fp32 on an AVX2-only CPU, and a SmolLM2-135M update 18x slower
  (7.8 s vs 138 s, AMD EPYC Zen 3; docs/speed.md). On CUDA it is `torch.cuda.is_bf16_supported()`.
* `auto` is bf16 where it is native and fp32 ("no") elsewhere. It is resolved before a run id is
  hashed (kl_utils.config.arms.canonical_spec): precision is part of a run's identity, so a record
  made in bf16 and one made in fp32 never share an id, and arms pair only within one precision.
  The committed profiles name their precision explicitly, so their records are found on any host.
* A stage that names bf16 on a device without native bf16 runs as asked (the records stay
  comparable) after one warning line (`warn_slow_bf16`): the slowdown and the way out.
* `AVX2_ENV` forces the AVX2-only path on any x86-64 host (torch's kernels, oneDNN, MKL):
  `make test-avx2` runs the suite that way.

Imports torch only to ask CUDA; a CPU answer reads /proc/cpuinfo (config/ and plan stay light).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PRECISIONS = ("no", "bf16", "auto")  # fp16 is refused: SAM's two passes and a GradScaler do not mix
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN's ISA names, lowest first; at or above AVX512_CORE_BF16 it may use the bf16 instructions.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "ALL", "DEFAULT")
# The AVX2-only path on any x86-64 host: what an AMD Zen 3 runs (measured to reproduce its bf16 fallback).
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
BF16_SLOWDOWN = "about 18x slower than fp32 (a SmolLM2-135M update: 138 s vs 7.8 s on an AVX2-only CPU)"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo's first `flags` line; empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_native_bf16(flags: set[str] | None = None, environ: dict | None = None) -> bool:
    """Whether bf16 matrix multiplies run on bf16 instructions here (see the module's Decisions)."""
    flags = cpu_flags() if flags is None else flags
    env = os.environ if environ is None else environ
    if not any(f in flags for f in NATIVE_BF16_FLAGS):
        return False
    isa = env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return not isa or isa not in ONEDNN_ISAS or ONEDNN_ISAS.index(isa) >= ONEDNN_ISAS.index("AVX512_CORE_BF16")


def native_bf16(device_type: str = "cpu") -> bool:
    if device_type == "cuda":
        import torch
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_native_bf16() if device_type == "cpu" else False


def default_device_type() -> str:
    """The device a run trains on (accelerate's choice: CUDA when there is one), without importing
    torch where no CUDA library could be there."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve(mixed_precision: str | None, device_type: str | None = None) -> str:
    """The precision a stage runs in: `auto` -> bf16 where native, else "no"; others unchanged."""
    if mixed_precision != "auto":
        return mixed_precision or "no"
    return "bf16" if native_bf16(device_type or default_device_type()) else "no"


def label(mixed_precision: str) -> str:
    """How records and tables name a resolved precision."""
    return {"no": "fp32", "bf16": "bf16"}.get(mixed_precision, mixed_precision)


def slow_bf16_message(where: str = "") -> str:
    """The one line for bf16 named on a device without native bf16."""
    return (f"warning: {where + ' ' if where else ''}bf16 is named, but this CPU has no native bf16 "
            f"(no {' / '.join(NATIVE_BF16_FLAGS)}{', or ONEDNN_MAX_CPU_ISA limits it' if cpu_flags() & set(NATIVE_BF16_FLAGS) else ''}): "
            f"training runs {BF16_SLOWDOWN}; set mixed_precision: auto (fp32 here) in the profile's stages, "
            "or run it on a CPU with AVX-512 BF16 / AMX (its records are bf16 runs: other arithmetic than fp32)")


_WARNED: list[str] = []


def warn_slow_bf16(mixed_precision: str, device_type: str = "cpu", where: str = "", stream=None) -> bool:
    """Print slow_bf16_message once per process when bf16 is named without native support (a grid's
    parent warns before it starts its workers; each worker's training loop once more, in its own
    process); True when it applies."""
    if mixed_precision != "bf16" or device_type != "cpu" or native_bf16(device_type):
        return False
    if not _WARNED:
        _WARNED.append(where)
        print(slow_bf16_message(where), file=stream or sys.stderr, flush=True)
    return True


def host_arithmetic(device_type: str | None = None) -> dict:
    """What a record says of the host's arithmetic: the device, native bf16 or not, torch's CPU
    kernel level, and the ISA limits set in the environment."""
    device_type = device_type or default_device_type()
    out = {"device": device_type, "native_bf16": native_bf16(device_type)}
    try:
        import torch
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        pass
    limits = {k: os.environ[k] for k in AVX2_ENV if os.environ.get(k)}
    if limits:
        out["isa_limits"] = limits
    return out


def matmul_gflops(dtype: str = "float32", m: int = 2048, k: int = 2048, n: int = 2048, seconds: float = 0.5,
                  threads: int | None = None) -> float:
    """This host's rate for an m x k by k x n matrix multiply in `dtype` (float32 | bfloat16), GFLOP/s:
    one warm-up, then repeats until `seconds` have passed (at least one). On the calling thread count
    unless `threads` is given."""
    import time

    import torch
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(m, k, generator=gen).to(getattr(torch, dtype))
        b = torch.randn(k, n, generator=gen).to(getattr(torch, dtype))
        a @ b
        reps, t0 = 0, time.perf_counter()
        while reps == 0 or time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9
    finally:
        torch.set_num_threads(before)


def bf16_cost_line(threads: int = 1) -> str:
    """One line of what bf16 costs on this CPU, measured now (~1 s): a SmolLM2-sized matmul (512 tokens x
    576 x 1536) in fp32 and in bf16."""
    shape = dict(m=512, k=576, n=1536, seconds=0.2, threads=threads)
    fp32, bf16 = matmul_gflops("float32", **shape), matmul_gflops("bfloat16", **shape)
    return (f"a SmolLM2-sized matmul runs at {fp32:.0f} GFLOP/s in fp32 and {bf16:.1f} GFLOP/s in bf16 here "
            f"({fp32 / bf16:.1f}x {'slower' if fp32 > bf16 else 'faster'} in bf16, {threads} thread)")
