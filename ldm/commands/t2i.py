"""``ldm t2i``: text to image with a pretrained diffusers pipeline (SD 1.x/2.x, SDXL, SSD-1B, SDXL-Turbo), + LoRA.

    ldm t2i --model stabilityai/sdxl-turbo --prompt "a portrait photo of a smiling student" -n 2 --out t2i/
    ldm t2i --model segmind/SSD-1B --prompt "..." --negative-prompt "blurry" --seed random --out t2i/
    ldm t2i --model DIR --lora LORA_DIR --lora-scale 0.8 --prompt "..." --width 768 --height 768 --out t2i/
    ldm t2i --from-image t2i/a-portrait-photo-seed0.png --out again/     # the same pixels from its parameters

A hub id is read from the local Hugging Face cache (downloaded where the hub is reachable); a folder is any
pipeline saved with ``save_pretrained``. Steps and guidance default to the model family's (SDXL-Turbo: 1 step, no
guidance; SDXL / SSD-1B: 25 steps, 7; SD 1.x: 25, 7.5), the size to the model's own. Each PNG carries its
parameters, the model's and the LoRA's hashes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "text to image with a pretrained diffusers pipeline (SD, SDXL, SSD-1B, SDXL-Turbo) and optional LoRA"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ldm.text2image import PRESETS

    p.add_argument("--model", default=None, help=f"hub id or pipeline folder (e.g. {', '.join(PRESETS.values())})")
    p.add_argument("--prompt", default=None, help="what the image shows")
    p.add_argument("--negative-prompt", default="", help="what it should not show")
    p.add_argument("--seed", default="0", help="seed of the first image (image i: seed + i), or 'random'")
    p.add_argument("-n", "--num-images", type=int, default=1, help="images (default 1)")
    p.add_argument("--width", type=int, default=None, help="width in pixels (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="height in pixels (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model family's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: family's)")
    p.add_argument("--lora", default=None, help="LoRA weights: folder or hub id")
    p.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (0 = the base model; default 1)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--from-image", default=None, metavar="PNG", help="make an `ldm t2i` PNG again from its parameters")
    p.add_argument("--out", required=True, help="output folder")


def _seed(text: str) -> int | None:
    from ldm.errors import UserError

    if str(text).strip().lower() == "random":
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--seed {text!r}: give a whole number or 'random'") from None


def run(args: argparse.Namespace) -> int:
    from ldm.errors import UserError
    from ldm.text2image import T2IRequest, generate_to_folder, load_text2image
    from ldm.utils import check_output_folder

    check_output_folder(args.out)
    if args.from_image:
        return from_image(args.from_image, args.out, args.model)
    if not args.model:
        raise UserError("give --model (a hub id or a pipeline folder), or --from-image PNG")
    if not args.prompt:
        raise UserError("give --prompt TEXT: what the image should show")
    request = T2IRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        seed=_seed(args.seed),
        num_images=args.num_images,
        width=args.width,
        height=args.height,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
    )
    model = load_text2image(args.model, device=args.device, lora=args.lora, lora_scale=args.lora_scale)
    for path, _ in generate_to_folder(model, request, args.out):
        print(path)
    return 0


def from_image(png: str, out: str, model_source: str | None = None) -> int:
    """Regenerate a text-to-image PNG from its parameters into ``out``; prints whether the pixels are identical."""
    import numpy as np
    from PIL import Image

    from ldm.diffusion.sample_files import read_parameters, save_png_with_parameters
    from ldm.errors import UserError
    from ldm.text2image import KIND, load_for_record, regenerate

    params = read_parameters(png)
    if params.get("kind") != KIND:
        raise UserError(f"{png} was not made by `ldm t2i` (kind {params.get('kind')!r}): use ldm sample --from-image")
    model = load_for_record(params, model_source)
    image = regenerate(params, model)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / Path(png).name
    if path.resolve() == Path(png).resolve():
        path = out_dir / f"{path.stem}-regenerated.png"
    save_png_with_parameters(image, path, params)
    with Image.open(png) as orig:
        same = np.array_equal(np.asarray(orig.convert(image.mode)), np.asarray(image))
    print(path)
    print(f"pixel-identical to {png}: {'yes' if same else 'no'}")
    return 0
