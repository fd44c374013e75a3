"""Device and precision: which device to train on, what hardware it is, and the one rule for mixed precision.

    device = default_device()                                   # "cuda", "mps" or "cpu"
    device = resolve_device(args.device)                        # the same for None/"auto"; a bad name: UserError
    precision = resolve_mixed_precision("auto", device)         # "no", "bf16" or "fp16"
    with autocast_context(precision, device): ...

Both trainers (``ldm train`` and ``ldm train-vae``) resolve their ``mixed_precision`` setting here. The two config
sections historically spell float32 differently (``training.mixed_precision: no``,
``autoencoder.mixed_precision: fp32``); both spellings are accepted in both places and normalised to ``"no"``
(accelerate's word).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

from ldm.choices import MIXED_PRECISION
from ldm.errors import UserError

CpuBf16 = Literal["kernels", "native"]


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is present, else ``"mps"`` (Apple) when available, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(device: Any = None, flag: str = "--device") -> str:
    """The device to use: ``None``, ``""`` or ``"auto"`` -> :func:`default_device`; else ``device`` checked to exist
    here (UserError naming ``flag`` and what is accepted: a typo, or a GPU this machine does not have)."""
    import torch

    if device is None or str(device).strip().lower() in ("", "auto"):
        return default_device()
    text = str(device).strip()
    accepted = "accepted: auto, cpu, cuda, cuda:N, mps"
    try:
        d = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"{flag} {text!r} is not a device; {accepted}") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UserError(f"{flag} {text}: this machine has no CUDA GPU that torch can use; use {flag} cpu or auto")
        if d.index is not None and d.index >= n:
            raise UserError(f"{flag} {text}: this machine has {n} CUDA GPU(s) (cuda:0 .. cuda:{n - 1})")
    elif d.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UserError(f"{flag} mps: Apple's MPS is not available here; use {flag} cpu or auto")
    elif d.type != "cpu":
        raise UserError(f"{flag} {text!r}: not supported; {accepted}")
    return text


def inference_dtype(device: str) -> Any:
    """The dtype to sample in on ``device``: on CUDA bfloat16 where the GPU has it, else float16 (half the memory
    and several times the speed of float32, as the Stable Diffusion pipelines run); float32 elsewhere (on a CPU,
    float32 is what makes a PNG's pixels reproducible from its parameters)."""
    import torch

    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def cpu_bf16_is_fast(need: CpuBf16 = "kernels") -> bool:
    """Whether bfloat16 autocast pays on this CPU.

    ``need="kernels"``: oneDNN has AVX-512 bf16 kernels (enough for the diffusion UNet, whose bf16 convolutions and
    matmuls are faster even when emulated on AVX-512). ``need="native"``: the CPU also has bf16 arithmetic
    (AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo, Linux only), which the autoencoder needs to gain.
    """
    import torch

    try:
        cap = torch.backends.cpu.get_cpu_capability()
        kernels = cap.startswith("AVX512") and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        kernels = False
    if need == "kernels":
        return kernels
    return bool(set(cpu_model_and_flags()[1]) & {"avx512_bf16", "amx_bf16"})


def normalize_precision(setting: str, key: str = "training.mixed_precision") -> str:
    """A ``mixed_precision`` setting in one vocabulary: ``"fp32"`` becomes ``"no"``; unknown values are an error."""
    if setting not in MIXED_PRECISION:
        raise UserError(f"{key} {setting!r}; accepted: {', '.join(MIXED_PRECISION)}")
    return "no" if setting == "fp32" else setting


def resolve_mixed_precision(
    setting: str, device: str, key: str = "training.mixed_precision", cpu_bf16: CpuBf16 = "kernels"
) -> str:
    """``"auto"`` / ``"no"`` (or ``"fp32"``) / ``"bf16"`` / ``"fp16"`` -> the precision to use: ``"no"``, ``"bf16"``
    or ``"fp16"``.

    ``auto``: on CUDA bf16 where supported, else fp16; on CPU bf16 where :func:`cpu_bf16_is_fast` (``cpu_bf16``)
    says it pays, else ``"no"``; ``"no"`` on other devices (MPS). An explicit setting is returned as is, except fp16
    off CUDA (CPU fp16 autocast is slow and unsupported for many ops), which is a :class:`UserError`. ``key`` names
    the setting in errors.
    """
    setting = normalize_precision(setting, key)
    dev = str(device).split(":")[0]
    if setting == "auto":
        if dev == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if dev == "cpu":
            return "bf16" if cpu_bf16_is_fast(cpu_bf16) else "no"
        return "no"
    if setting == "fp16" and dev != "cuda":
        raise UserError(f"{key}='fp16' needs CUDA (device is {device!r}); use 'bf16' or 'no'")
    return setting


def autocast_context(mixed_precision: str, device: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for a resolved ``"bf16"`` / ``"fp16"`` on ``device``'s type, a no-op context for ``"no"``."""
    import torch

    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    if dtype is None:
        raise UserError(f"mixed_precision {mixed_precision!r}; accepted here: no, bf16, fp16 (resolve 'auto' first)")
    return torch.autocast(device_type=str(device).split(":")[0], dtype=dtype)


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """This CPU's model name and instruction-set flags, from /proc/cpuinfo (Linux); elsewhere ``platform``'s
    processor name and no flags."""
    import platform

    model, flags = "", []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.split()
    return model or platform.processor() or platform.machine(), flags


def describe_device(device: Any) -> dict[str, Any]:
    """The hardware behind ``device``: ``{"device", "kind", "name", ...}``; on CUDA the GPU's name and compute
    capability, on a CPU its model name, whether it has AVX-512 BF16 instructions and torch's CPU capability."""

    import torch

    dev = torch.device(device)
    out: dict[str, Any] = {"device": str(dev), "kind": dev.type}
    if dev.type == "cuda":
        out["name"] = torch.cuda.get_device_name(dev)
        out["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(dev)))
    elif dev.type == "cpu":
        model, flags = cpu_model_and_flags()
        out["name"] = model
        out["avx512_bf16"] = "avx512_bf16" in flags
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        out["threads"] = torch.get_num_threads()
    return out


def library_versions() -> dict[str, str | None]:
    """Versions of python and the libraries a trained model depends on (None for one not installed)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
