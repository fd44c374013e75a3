"""The "Text to image" tab: a pretrained diffusers pipeline (preset hub id, typed id or workspace folder), prompt,
negative prompt, seed, size, steps, guidance, images and LoRA; a per-step progress bar; a gallery of PNGs that carry
their parameters (``ldm t2i --from-image`` makes them again).

One model is kept loaded between calls (the one asked for last); picking another frees it first.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from ldm.app.workspace import Workspace
from ldm.errors import UserError

NO_LORA_HELP = "A folder inside the workspace or a hub id; empty = none"


class Text2ImageState:
    """The loaded model (one at a time) and the handler of the tab."""

    def __init__(self, ws: Workspace, outputs: Path, device: str | None = None):
        self.ws, self.outputs, self.device = ws, outputs, device
        self._model: Any = None
        self._key: tuple[str, str] | None = None
        self._lock = threading.Lock()

    def _source(self, text: str | None, what: str) -> str:
        """A preset name, a hub id, or a folder inside the workspace (absolute path of it)."""
        from ldm.text2image import PRESETS

        raw = (text or "").strip()
        if not raw:
            raise UserError(f"no {what} given")
        if raw in PRESETS:
            return PRESETS[raw]
        local = Path(raw).expanduser()
        local = local if local.is_absolute() else self.ws.root / local
        # a folder (it, or the folder it would be in, exists here) must lie inside the workspace; else owner/name
        # is a hub id (read from the local cache)
        if local.exists() or local.parent.is_dir() or raw.startswith((".", "/", "~")) or raw.count("/") != 1:
            return str(self.ws.resolve(raw, what=what))
        return raw

    def model(self, source: str, lora: str, lora_scale: float) -> Any:
        """The model for ``source`` with ``lora``: the loaded one when it matches, else loaded (the old one freed)."""
        from ldm.text2image import load_text2image, set_lora_scale

        key = (source, lora)
        if self._key != key:
            self._model, self._key = None, None  # free the old one before loading the next
            import gc

            gc.collect()
            self._model = load_text2image(source, device=self.device, lora=lora or None, lora_scale=lora_scale)
            self._key = key
        elif lora:
            set_lora_scale(self._model, lora_scale)
        return self._model

    def defaults(self, model: str | None) -> list[Any]:
        """Width, height, steps and guidance boxes filled with the picked model's defaults (nothing is loaded)."""
        from ldm.text2image import defaults_for

        try:
            family, side = defaults_for(self._source(model, "model"))
        except UserError:
            return [gr.update()] * 4
        return [side, side, family.steps, family.guidance_scale]

    def generate(
        self,
        model: str | None,
        prompt: str | None,
        negative: str | None,
        seed: float | None,
        randomize: bool,
        width: float | None,
        height: float | None,
        steps: float | None,
        guidance: float | None,
        num_images: float | None,
        lora: str | None,
        lora_scale: float | None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[list[tuple[str, str]], list[str], str, str, int]:
        """(gallery, PNG files, parameters text, message, seed); a problem becomes the message, never a raise."""
        seed = random.randrange(0, 2**31 - 1) if randomize else int(seed or 0)
        try:
            return self._generate(model, prompt, negative, seed, width, height, steps, guidance, num_images, lora,
                                  lora_scale, progress)  # fmt: skip
        except UserError as e:
            gr.Warning(str(e))
            return [], [], "", f"**Problem:** {e}", seed

    def _generate(self, model, prompt, negative, seed, width, height, steps, guidance, num_images, lora, lora_scale,
                  progress):  # fmt: skip
        from ldm.text2image import T2IRequest, generate_to_folder
        from ldm.utils import slugify

        source = self._source(model, "model")
        lora_source = self._source(lora, "LoRA") if (lora or "").strip() else ""
        request = T2IRequest(
            prompt=prompt or "",
            negative_prompt=negative or "",
            seed=seed,
            num_images=int(num_images or 1),
            width=int(width) if width else None,
            height=int(height) if height else None,
            steps=int(steps) if steps else None,
            guidance_scale=None if guidance is None else float(guidance),
        )
        with self._lock:  # one generation at a time: the model is shared, and a CPU has no room for two
            progress(0, desc=f"loading {source}")
            m = self.model(source, lora_source, float(lora_scale if lora_scale is not None else 1.0))
            folder = self.outputs / f"{time.strftime('%Y%m%d-%H%M%S')}-t2i-{slugify(request.prompt[:30])}-seed{seed}"
            t0 = time.perf_counter()
            written = generate_to_folder(
                m, request, folder, on_step=lambda done, total: progress(done / total, desc=f"step {done}/{total}")
            )
            seconds = time.perf_counter() - t0
        files = [path for path, _ in written]
        records = [record for _, record in written]  # the parameters each PNG carries
        first = records[0]
        params = {k: first[k] for k in ("prompt", "negative_prompt", "width", "height", "num_inference_steps",
                                         "guidance_scale", "scheduler", "model", "lora")}  # fmt: skip
        params["seeds"] = [r["seed"] for r in records]
        params["folder"] = self.ws.rel(folder)
        gallery = [(str(f), f"seed {r['seed']}") for f, r in zip(files, records)]
        message = (
            f"Done: {len(files)} image(s), {first['width']}x{first['height']}, {first['num_inference_steps']} steps, "
            f"guidance {first['guidance_scale']:g}, in {seconds:.1f} s (seeds {params['seeds'][0]}.."
            f"{params['seeds'][-1]})."
        )
        return gallery, [str(f) for f in files], json.dumps(params, indent=2), message, seed


def text2image_tab(state: Text2ImageState) -> None:
    """The tab's components and their wiring."""
    from ldm.text2image import PRESETS

    first = next(iter(PRESETS))
    side, _, first_steps, first_guidance = state.defaults(first)
    with gr.Row(elem_classes="ldm-stack"):
        with gr.Column(scale=2, min_width=280):
            model = gr.Dropdown(
                label="Model",
                choices=[*PRESETS, *(state.ws.rel(p) for p in state.ws.discover().text2image)],
                value=first,
                allow_custom_value=True,
                info="A preset, a hub id (from the local cache) or a pipeline folder inside the workspace",
                elem_id="ldm-t2i-model",
            )
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a portrait photo of a smiling student",
                                elem_id="ldm-t2i-prompt")  # fmt: skip
            negative = gr.Textbox(
                label="Negative prompt", placeholder="blurry, low quality", elem_id="ldm-t2i-negative"
            )
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, elem_id="ldm-t2i-seed")
                randomize = gr.Checkbox(label="Random seed", value=False)
                num_images = gr.Slider(1, 8, value=1, step=1, label="Images")
            with gr.Row():
                size = dict(value=side, precision=0, info="the model's own when picked")
                width = gr.Number(label="Width", elem_id="ldm-t2i-w", **size)
                height = gr.Number(label="Height", elem_id="ldm-t2i-h", **size)
            with gr.Row():
                steps = gr.Number(label="Steps", value=first_steps, precision=0, info="Turbo 1-4, SD/XL ~25",
                                  elem_id="ldm-t2i-steps")  # fmt: skip
                guidance = gr.Number(label="Guidance", value=first_guidance, info="Turbo 0, SD/XL ~7",
                                     elem_id="ldm-t2i-guidance")  # fmt: skip
            with gr.Row():
                lora = gr.Textbox(label="LoRA weights", placeholder="loras/my-style", info=NO_LORA_HELP)
                lora_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="LoRA scale")
            go = gr.Button("Generate", variant="primary", elem_id="ldm-t2i-generate")
            message = gr.Markdown(elem_id="ldm-t2i-message")
        with gr.Column(scale=3, min_width=280):
            gallery = gr.Gallery(label="Images", columns=2, height="auto", object_fit="contain",
                                 elem_id="ldm-t2i-gallery")  # fmt: skip
            files = gr.File(label="Download PNGs (parameters embedded)", file_count="multiple")
            params = gr.Code(label="Parameters", language="json", wrap_lines=True, elem_id="ldm-t2i-params")
    model.change(state.defaults, model, [width, height, steps, guidance], api_name="text2image_defaults")
    go.click(
        state.generate,
        [model, prompt, negative, seed, randomize, width, height, steps, guidance, num_images, lora, lora_scale],
        [gallery, files, params, message, seed],
        api_name="text2image",
        concurrency_limit=1,
    )
