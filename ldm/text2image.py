"""Text to image with pretrained diffusers pipelines (SD 1.x/2.x, SDXL, SSD-1B, SDXL-Turbo), optionally with LoRA.

    model = load_text2image("stabilityai/sdxl-turbo")                  # a hub id (from the local cache) or a folder
    request = T2IRequest(prompt="a portrait photo", seed=0, num_images=2)
    images, records = generate(model, request)                        # PIL images and their provenance records

The pipeline comes from ``diffusers.AutoPipelineForText2Image`` (the class named in the folder's model_index.json);
LoRA weights through the pipeline's ``load_lora_weights`` (the peft backend) with a scale. Device and dtype follow
the project's rules (:func:`ldm.device.resolve_device`; float16 or bfloat16 on CUDA, float32 on a CPU, where a PNG's
pixels must come out the same when regenerated); model CPU offload on a GPU with little memory; attention slicing
on a CPU. Defaults per family (steps, guidance) unless the request sets them; the size defaults to the model's own
(its UNet's sample size times the autoencoder's down factor: 512 for SD 1.5 and SDXL-Turbo, 1024 for SDXL and
SSD-1B) and must be a multiple of that down factor.

Images are generated one seed per image (image i: ``seed + i``, noise drawn on the CPU), so an image depends only
on its own parameters; :func:`regenerate` makes the pixels of a PNG written by ``ldm t2i`` again.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldm.errors import UserError

KIND = "text2image"  # the ``kind`` of the provenance record of a text-to-image PNG
MAX_SEED = 2**63 - 1

# Example models of the apps this feature grew from: preset name -> hub id (also accepted as typed).
PRESETS: dict[str, str] = {
    "SDXL-Turbo": "stabilityai/sdxl-turbo",
    "SSD-1B": "segmind/SSD-1B",
    "SDXL 1.0": "stabilityai/stable-diffusion-xl-base-1.0",
    "SD 1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}


@dataclass(frozen=True)
class Family:
    """Defaults of a family of pipelines (what their model cards recommend)."""

    name: str
    steps: int
    guidance_scale: float
    size: int  # the side its models are trained at (used when a model's own config cannot be read)
    max_steps: int | None = None  # distilled few-step models: more steps do not help (and can hurt)


FAMILIES = {
    "sd": Family("Stable Diffusion 1.x/2.x", steps=25, guidance_scale=7.5, size=512),
    "sdxl": Family("SDXL / SSD-1B", steps=25, guidance_scale=7.0, size=1024),
    "turbo": Family("SDXL-Turbo (adversarially distilled: 1-4 steps, no guidance)", 1, 0.0, 512, max_steps=4),
}


def family_of(pipeline_class: str, source: str) -> Family:
    """The family of a pipeline class (``StableDiffusionXLPipeline``...) and its source (a name with "turbo")."""
    if "turbo" in source.lower():
        return FAMILIES["turbo"]
    if "XL" in pipeline_class:
        return FAMILIES["sdxl"]
    return FAMILIES["sd"]


def defaults_for(source: str) -> tuple[Family, int]:
    """The family and default image side of a model, read from its configs without loading any weights (a folder,
    or a hub id in the local cache); from its name, with the family's usual side, when the configs are not here."""
    source = PRESETS.get(source.strip(), source.strip())
    folder = Path(source).expanduser()
    try:
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source, local_files_only=True))
        index = json.loads((folder / "model_index.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        side = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        return family_of(index.get("_class_name", ""), source), side
    except Exception:  # noqa: BLE001 - not here (not cached, not a folder, no configs): judge by the name
        name = source.lower()
        family = family_of("XL" if ("xl" in name or "ssd" in name) else "", source)
        return family, family.size


@dataclass
class T2IRequest:
    """What to generate. ``None`` fields take the model's defaults (family steps and guidance, the model's size)."""

    prompt: str
    negative_prompt: str = ""
    seed: int | None = 0  # None: a random seed (recorded in the PNGs)
    num_images: int = 1
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None


@dataclass
class Text2ImageModel:
    """A loaded pipeline with what generation and provenance need."""

    pipe: Any
    source: str  # as given: hub id or folder
    folder: Path  # the folder the weights were read from (a hub snapshot or the given folder)
    family: Family
    device: str
    dtype: Any
    weights_hash: str
    lora: dict[str, Any] | None = None  # {"source", "folder", "hash", "scale"}
    default_size: int = 512
    down_factor: int = 8

    def identity(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "pipeline": type(self.pipe).__name__,
            "weights_hash": self.weights_hash,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": self.device,
        }


def _need_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UserError(
            "text to image needs the `transformers` package (the text encoders): pip install -e '.[t2i]'"
        ) from None


def _local_folder(source: str, what: str) -> Path:
    """A folder for ``source``: the folder itself, else the hub id's snapshot in the local cache, else (where the
    hub is reachable) downloaded; UserError saying which when none works."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{what} {source} is a file; give a folder saved with save_pretrained, or a hub id")
    looks_like_id = "/" in source and not source.startswith((".", "/", "~")) and source.count("/") == 1
    if not looks_like_id:
        raise UserError(f"{what} {source!r}: no such folder, and not a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (the hub library raises several kinds); try the hub next
        pass
    try:
        return Path(snapshot_download(source))
    except Exception as e:  # noqa: BLE001 - no network, unknown id, gated model: one message for the user
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__
        raise UserError(
            f"{what} {source!r} is not in the local cache and cannot be downloaded here ({reason}); give a local "
            "folder (a diffusers pipeline saved with save_pretrained, e.g. downloaded on another machine with "
            f"`huggingface-cli download {source} --local-dir DIR`)"
        ) from None


def load_text2image(
    source: str,
    device: str | None = None,
    dtype: Any = None,
    lora: str | None = None,
    lora_scale: float = 1.0,
) -> Text2ImageModel:
    """Load the text-to-image pipeline at ``source`` (hub id or folder) on ``device``, with LoRA weights ``lora``
    (folder or hub id) at ``lora_scale``. Raises UserError for a missing model, a folder that is no text-to-image
    pipeline, a bad device, or LoRA weights that do not fit the model."""
    import torch

    from ldm.device import inference_dtype, resolve_device
    from ldm.utils import hash_folder

    _need_transformers()
    source = str(source).strip()
    if not source:
        raise UserError(f"no model given; e.g. one of {', '.join(PRESETS.values())}, or a local pipeline folder")
    source = PRESETS.get(source, source)
    device = resolve_device(device)
    dtype = dtype or inference_dtype(device)
    folder = _local_folder(source, "model")
    index = folder / "model_index.json"
    if not index.is_file():
        raise UserError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    pipeline_class = json.loads(index.read_text()).get("_class_name", "")

    from diffusers import AutoPipelineForText2Image
    from diffusers.utils import logging as diffusers_logging

    bar = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(folder, dtype=dtype)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise UserError(f"could not load {source} as a text-to-image pipeline ({pipeline_class}): {e}") from None
    finally:
        if bar:
            diffusers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    if str(device).startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        if total < 12 * 2**30:  # SDXL in float16 needs ~10 GB at 1024x1024: keep only the active part on the GPU
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    else:
        pipe.to(device)
        if device == "cpu":
            pipe.enable_attention_slicing()  # lower peak memory at 1024x1024 on a machine without a GPU
    down_factor = int(getattr(pipe, "vae_scale_factor", 8))
    sample = getattr(pipe, "default_sample_size", None) or pipe.unet.config.sample_size
    model = Text2ImageModel(
        pipe=pipe,
        source=source,
        folder=folder,
        family=family_of(type(pipe).__name__, source),
        device=device,
        dtype=dtype,
        weights_hash=hash_folder(folder),
        default_size=int(sample) * down_factor,
        down_factor=down_factor,
    )
    if lora:
        set_lora(model, lora, lora_scale)
    return model


def set_lora(model: Text2ImageModel, lora: str, scale: float = 1.0) -> None:
    """Load LoRA weights (folder or hub id) into ``model`` at ``scale`` (0 = the base model's images)."""
    from ldm.utils import hash_folder

    folder = _local_folder(str(lora).strip(), "LoRA")
    try:
        model.pipe.load_lora_weights(str(folder), adapter_name="lora")
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise UserError(f"could not load the LoRA weights {lora} into {model.source}: {e}") from None
    model.lora = {"source": str(lora), "hash": hash_folder(folder), "scale": float(scale)}
    set_lora_scale(model, scale)


def set_lora_scale(model: Text2ImageModel, scale: float) -> None:
    import math

    if model.lora is None:
        raise UserError("no LoRA weights are loaded")
    if not math.isfinite(scale):
        raise UserError(f"LoRA scale must be a number, got {scale}")
    model.pipe.set_adapters(["lora"], adapter_weights=[float(scale)])
    model.lora["scale"] = float(scale)


def resolve_request(model: Text2ImageModel, r: T2IRequest) -> T2IRequest:
    """``r`` with every default filled in and every value checked (UserError naming the field and what is
    accepted)."""
    import math

    if not isinstance(r.prompt, str) or not r.prompt.strip():
        raise UserError("the prompt is empty: say what the image should show")
    fam = model.family
    steps = fam.steps if r.steps in (None, 0) else int(r.steps)
    guidance = fam.guidance_scale if r.guidance_scale is None else float(r.guidance_scale)
    width = model.default_size if not r.width else int(r.width)
    height = model.default_size if not r.height else int(r.height)
    seed = random.randrange(0, 2**31 - 1) if r.seed is None else r.seed
    if isinstance(seed, bool) or not float(seed).is_integer() or not 0 <= int(seed) <= MAX_SEED - 64:
        raise UserError(f"seed {seed} is not a whole number from 0 to {MAX_SEED - 64}")
    if not 1 <= r.num_images <= 16:
        raise UserError(f"number of images must be from 1 to 16, got {r.num_images}")
    if not 1 <= steps <= 1000:
        raise UserError(f"steps must be from 1 to 1000, got {steps}")
    if fam.max_steps and steps > fam.max_steps:
        raise UserError(f"{fam.name}: use 1 to {fam.max_steps} steps, got {steps}")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise UserError(f"guidance scale must be a number >= 0, got {guidance}")
    f = model.down_factor
    for name, side in (("width", width), ("height", height)):
        if side < f or side > 4096 or side % f:
            lower, upper = max(f, side // f * f), max(f, (side // f + 1) * f)
            hint = f"; try {lower} or {upper}" if side % f else ""
            raise UserError(
                f"{name} {side} must be a multiple of {f} from {f} to 4096 (the model's latent grid){hint}"
            )
    return dataclasses.replace(r, seed=int(seed), steps=steps, guidance_scale=guidance, width=width, height=height,
                               negative_prompt=r.negative_prompt or "")  # fmt: skip


def generate(
    model: Text2ImageModel,
    request: T2IRequest,
    on_step: Callable[[int, int], None] | None = None,
    watermark: bool = True,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Generate ``request.num_images`` images, one call per image (seed + i, CPU noise); returns the PIL images and
    their provenance records (everything :func:`regenerate` needs). ``on_step(done, total)`` reports progress. With
    ``watermark`` each image carries the invisible mark of the model's weights hash (:mod:`ldm.watermark`)."""
    import torch

    from ldm import watermark as wm

    r = resolve_request(model, request)
    images, records = [], []
    total = r.num_images * r.steps
    for i in range(r.num_images):
        seed = r.seed + i

        def step_end(pipe: Any, step: int, t: Any, kwargs: dict[str, Any], i: int = i) -> dict[str, Any]:
            if on_step is not None:
                on_step(i * r.steps + step + 1, total)
            return kwargs

        image = model.pipe(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt or None,
            num_inference_steps=r.steps,
            guidance_scale=r.guidance_scale,
            width=r.width,
            height=r.height,
            generator=torch.Generator("cpu").manual_seed(seed),
            callback_on_step_end=step_end,
        ).images[0]
        if watermark:
            image = wm.encode(image, wm.model_id(model.weights_hash))
        images.append(image)
        records.append(_record(model, r, seed, i))
        records[-1]["watermark"] = wm.record(image, model.weights_hash) if watermark else None
    return images, records


def _record(model: Text2ImageModel, r: T2IRequest, seed: int, index: int) -> dict[str, Any]:
    from ldm.diffusion.sample_files import FORMAT_VERSION

    params = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "seed": seed,
        "index": index,
        "width": r.width,
        "height": r.height,
        "num_inference_steps": r.steps,
        "guidance_scale": r.guidance_scale,
        "scheduler": type(model.pipe.scheduler).__name__,
        "model": model.identity(),
        "lora": dict(model.lora) if model.lora else None,
    }
    lora = f", LoRA {model.lora['source']} x {model.lora['scale']:g}" if model.lora else ""
    params["text"] = (
        f"{r.prompt}\nNegative prompt: {r.negative_prompt or 'none'}\nSteps: {r.steps}, Sampler: "
        f"{params['scheduler']}, CFG scale: {r.guidance_scale:g}, Seed: {seed}, Size: {r.width}x{r.height}, "
        f"Model: {model.source}, Model hash: {model.weights_hash[:12]}{lora}"
    )
    return params


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe start of a prompt."""
    from ldm.utils import slugify

    return slugify(text[:limit]) or "image"


def generate_to_folder(
    model: Text2ImageModel, request: T2IRequest, out: str | Path, on_step: Callable[[int, int], None] | None = None
) -> list[tuple[Path, dict[str, Any]]]:
    """:func:`generate`, written as ``<prompt>-seed<S>.png`` files carrying their records into ``out``: (path, record)
    per image."""
    from ldm.diffusion.sample_files import save_png_with_parameters
    from ldm.utils import check_output_folder

    out = check_output_folder(out)
    images, records = generate(model, request, on_step)
    out.mkdir(parents=True, exist_ok=True)
    return [
        (save_png_with_parameters(img, out / f"{slug(rec['prompt'])}-seed{rec['seed']}.png", rec), rec)
        for img, rec in zip(images, records)
    ]


def request_of(params: dict[str, Any]) -> T2IRequest:
    """The request that made the image of a provenance record (one image, its own seed)."""
    return T2IRequest(
        prompt=params["prompt"],
        negative_prompt=params.get("negative_prompt") or "",
        seed=int(params["seed"]),
        num_images=1,
        width=int(params["width"]),
        height=int(params["height"]),
        steps=int(params["num_inference_steps"]),
        guidance_scale=float(params["guidance_scale"]),
    )


def load_for_record(params: dict[str, Any], model_source: str | None = None) -> Text2ImageModel:
    """The model (and LoRA) of a provenance record, on its device and dtype, checked against its hashes."""
    import torch

    m = params.get("model") or {}
    source = model_source or m.get("source")
    if not source:
        raise UserError("the image names no model; give --model")
    dtype = getattr(torch, str(m.get("dtype") or "float32"))
    device = m.get("device") or "cpu"
    lora = params.get("lora") or None
    lora_source, lora_scale = (lora["source"], lora["scale"]) if lora else (None, 1.0)
    model = load_text2image(source, device=device, dtype=dtype, lora=lora_source, lora_scale=lora_scale)
    if m.get("weights_hash") and model.weights_hash != m["weights_hash"]:
        raise UserError(
            f"the model at {source} is not the one that made the image (weights hash {model.weights_hash[:12]} != "
            f"{str(m['weights_hash'])[:12]}); give --model with the original"
        )
    if lora and lora.get("hash") and model.lora["hash"] != lora["hash"]:
        raise UserError(f"the LoRA weights at {lora['source']} are not the ones that made the image (hash differs)")
    return model


def regenerate(params: dict[str, Any], model: Text2ImageModel) -> Any:
    """The image of a provenance record, made again with ``model`` (the same pixels on the same device and dtype)."""
    # images written before the watermark existed record none: they come back unmarked, pixel for pixel
    images, _ = generate(model, request_of(params), watermark=bool(params.get("watermark")))
    return images[0]
