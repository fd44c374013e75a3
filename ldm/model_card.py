"""Model cards: the ``README.md`` of every exported pipeline folder, in the Hugging Face model-card format.

    from ldm.model_card import write_model_card, refresh_model_card
    write_model_card("runs/faces/pipeline")       # the facts of the run folder around it, when there is one
    refresh_model_card("runs/faces/pipeline", "runs/faces/eval.json")   # after ldm eval: the evaluation section only

A card is a YAML header for the Hub (``library_name``, ``pipeline_tag``, ``license``, ``tags``, written with
huggingface_hub's ``ModelCardData``) and a short body for people: what the model generates, a table of its classes
with their training-image counts, the training data (folder, fingerprint, synthetic or not), the recipe, the
numbers of ``ldm eval``, how to load it, intended use and limitations, the licence to choose and, unless the data is
known to be synthetic, a box asking the user to confirm that the people pictured consented.

The facts come from the pipeline folder itself (class names, sizes), and from the run folder when there is one
(:class:`ldm.run_folder.RunFolder`: ``config.yaml``, ``inputs.json``, the checkpoint's ``state.json``, ``eval.json``;
the latent cache's manifest for runs that predate ``inputs.json``'s counts). A fact that is not known is said to be
unknown. The trainer writes the card into ``pipeline/`` at every export, ``ldm export`` into the folder it writes and
``ldm eval`` rewrites the evaluation section (between two HTML comments) and leaves the rest of the card, with the
user's edits, as it is. A licence and a ticked consent box the user set carry over to the next export of the same
model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldm.run_folder import RunFolder
from ldm.utils import atomic_write_text, hash_folder, recorded_path, resolve_recorded

CARD = "README.md"
# the Hub's identifier for "no licence chosen" (https://huggingface.co/docs/hub/repositories-licenses): the weights
# inherit the terms of the training images, which only the user knows
LICENSE_UNSET = "unknown"
LICENSE_HELP = "choose one: https://huggingface.co/docs/hub/repositories-licenses (the training images' terms apply)"
# the Hub has no class-conditional task; a class id is the model's only input, so the closest is unconditional
PIPELINE_TAG = "unconditional-image-generation"
TAGS = ("diffusers", "latent-diffusion", "class-conditional", "image-generation")
EVAL_BEGIN = "<!-- ldm:evaluation (rewritten by `ldm eval`) -->"
EVAL_END = "<!-- /ldm:evaluation -->"
CONSENT = "The people pictured in the training images consented to their photos being used to train this model."
EVAL_HASH_KEY = "unet_files_hash"  # the key of eval.json naming the weights it measured (see unet_files_hash)

_PRECISION = {"no": "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast"}


def unet_files_hash(pipeline_dir: str | Path) -> str | None:
    """Content hash of the UNet weight files of a pipeline folder (``unet/*.safetensors``), or None without them.

    ``ldm eval`` records it in ``eval.json``: a card shows the numbers only for the weights they were measured on.
    """
    unet = Path(pipeline_dir) / "unet"
    if not any(unet.glob("*.safetensors")):
        return None
    return hash_folder(unet, ("*.safetensors",))


def run_of(pipeline_dir: str | Path) -> RunFolder | None:
    """The run folder a pipeline folder belongs to (it is the run's ``pipeline/``), or None."""
    p = Path(pipeline_dir)
    if p.name != RunFolder.PIPELINE:
        return None
    run = RunFolder(p.parent)
    return run if run.is_run else None


def shown_path(path: str | None, card_dir: str | Path) -> str | None:
    """How a card shows a local path: relative to the card's folder where the workspace rules record it so
    (:func:`ldm.utils.recorded_path`), else only the folder's name (a card is made to be shared, and an absolute path
    tells how this machine is organised). A hub id or another non-path is shown as it is."""
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    recorded = recorded_path(p, card_dir)
    return recorded if not Path(recorded).is_absolute() else p.name


def known_synthetic(data_dir: str | None) -> bool:
    """Whether the training images were drawn by ``ldm data synth-faces`` (the project's procedural cartoon faces,
    which show no real person): its marker file is in the data folder. Class names alone prove nothing (real photos
    can be sorted into folders named "smiling" and "frowning")."""
    from ldm.data.synth import is_synthetic_dataset

    return bool(data_dir) and is_synthetic_dataset(data_dir)


# ---------------------------------------------------------------------------------------------------------------------
# the facts


@dataclass
class Evaluation:
    """The ``eval.json`` a card shows. ``state``: ``current`` (measured on these weights), ``unverified`` (an older
    eval.json that names no weights), ``stale`` (measured on other weights)."""

    result: dict[str, Any]
    path: Path
    state: str


@dataclass
class CardFacts:
    """What a card says; None where it is not known."""

    name: str
    classes: list[str]
    card_dir: Path  # where the card is written: shown paths are relative to it
    image_size: int | None = None
    channels: int | None = None
    latent_shape: list[int] | None = None
    unet_parameters: int | None = None
    counts: dict[str, int] | None = None
    data_dir: str | None = None  # absolute, or None
    data_fingerprint: str | None = None
    autoencoder: str | None = None  # source as recorded (absolute path or hub id)
    autoencoder_class: str | None = None
    config: Any = None  # the run's ldm.config.Config
    step: int | None = None
    seconds: float | None = None
    segments: int | None = None
    precision: str | None = None
    device: dict[str, Any] | None = None
    num_processes: int | None = None
    has_run: bool = False
    evaluation: Evaluation | None = None

    @property
    def synthetic(self) -> bool:
        return known_synthetic(self.data_dir)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _unet_parameters(pipeline_dir: Path) -> int | None:
    """Parameter count of the UNet, from the safetensors headers (nothing is loaded)."""
    try:
        from safetensors import safe_open

        total = 0
        for f in sorted((pipeline_dir / "unet").glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    total += math.prod(st.get_slice(key).get_shape())
        return total or None
    except Exception:  # a damaged file: the card just does not say
        return None


def _pipeline_facts(facts: CardFacts, pipeline_dir: Path) -> None:
    """Sizes from the pipeline's own configs (the fallback when no run records them)."""
    unet = _read_json(pipeline_dir / "unet" / "config.json") or {}
    vae = _read_json(pipeline_dir / "vae" / "config.json") or {}
    size = unet.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    if isinstance(size, int) and unet.get("in_channels"):
        facts.latent_shape = [int(unet["in_channels"]), size, size]
    # both autoencoder classes downsample by 2 at every level but the first (ldm.models.autoencoder)
    widths = vae.get("block_out_channels") or vae.get("encoder_block_out_channels")
    if isinstance(size, int) and widths:
        facts.image_size = size * 2 ** (len(widths) - 1)
    facts.channels = vae.get("out_channels")
    facts.autoencoder_class = vae.get("_class_name")
    facts.unet_parameters = _unet_parameters(pipeline_dir)


def _run_facts(facts: CardFacts, run: RunFolder, checkpoint: Path | None) -> None:
    """The training data and recipe from the run folder (``inputs.json``, ``config.yaml``, the checkpoint)."""
    from ldm.data.manifest import Manifest

    facts.has_run = True
    ckpt = Path(checkpoint) if checkpoint is not None else run.latest_checkpoint()
    state: dict[str, Any] = {}
    if ckpt is not None:
        try:
            state = RunFolder.read_checkpoint_state(ckpt)
        except (OSError, ValueError):
            state = {}
    inputs = run.read_inputs() or {}
    latents = inputs.get("latents") or {}
    manifest = None
    cache = latents.get("path") or (RunFolder.checkpoint_latents(ckpt) if ckpt is not None else None)
    if cache and Manifest.exists(cache):
        try:
            manifest = Manifest.load(cache)
        except Exception:  # a broken manifest: the run's own records still speak
            manifest = None

    def fact(key: str) -> Any:
        value = latents.get(key)
        return value if value is not None else getattr(manifest, key, None)

    facts.counts = fact("counts") or facts.counts
    facts.image_size = fact("image_size") or facts.image_size
    facts.channels = fact("channels") or facts.channels
    facts.latent_shape = fact("latent_shape") or facts.latent_shape
    facts.data_dir = fact("data_dir")
    facts.data_fingerprint = fact("data_fingerprint")
    ae = inputs.get("autoencoder") or {}
    facts.autoencoder = ae.get("source") or (manifest.autoencoder.source if manifest else None)
    facts.autoencoder_class = ae.get("class_name") or facts.autoencoder_class
    facts.precision = inputs.get("mixed_precision") or state.get("mixed_precision")
    facts.device = inputs.get("device")
    facts.num_processes = inputs.get("num_processes") or state.get("num_processes")
    if run.config_path.is_file():
        try:
            facts.config = run.read_config()
        except Exception:  # an older or foreign config: the card says the recipe is unknown
            facts.config = None
    if state:
        facts.step = state.get("step")
        facts.seconds = state.get("elapsed_seconds")
        facts.segments = len(state.get("segments") or []) or None


def _evaluation(candidates: list[Path], pipeline_dir: Path) -> Evaluation | None:
    """The first ``eval.json`` among ``candidates`` measured on the weights of ``pipeline_dir``
    (:func:`unet_files_hash`), else the first that names no weights (older evaluations), else the first found
    (numbers of other weights: not shown)."""
    found, weights = [], None
    for path in dict.fromkeys(candidates):  # in order, once each
        result = _read_json(path) if path.is_file() else None
        if not isinstance(result, dict) or "fid" not in result:
            continue
        recorded = result.get(EVAL_HASH_KEY)
        if recorded and weights is None:
            weights = unet_files_hash(pipeline_dir)  # only when there is something to compare (large files)
        state = "unverified" if not recorded else "current" if recorded == weights else "stale"
        found.append(Evaluation(result, path, state))
    for state in ("current", "unverified", "stale"):
        for ev in found:
            if ev.state == state:
                return ev
    return None


def eval_candidates(pipeline_dir: Path, run: RunFolder | None, source: Path | None = None) -> list[Path]:
    """Where ``ldm eval`` may have written the numbers of a pipeline: into the folder it was given, the pipeline
    folder itself or the run folder around it (for the weights' source folder too, when exporting)."""
    out = []
    for folder in (pipeline_dir, source):
        if folder is None:
            continue
        out.append(Path(folder) / RunFolder.EVAL)
        if Path(folder).name == RunFolder.PIPELINE:
            out.append(Path(folder).parent / RunFolder.EVAL)
    if run is not None:
        out.append(run.eval_path)
    return out


def gather_facts(
    pipeline_dir: str | Path,
    run: str | Path | RunFolder | None = None,
    checkpoint: str | Path | None = None,
    *,
    name: str | None = None,
    source: str | Path | None = None,
) -> CardFacts:
    """The facts of the card of ``pipeline_dir``.

    ``run``: the run folder the weights come from (default: the run around ``pipeline_dir``, if any);
    ``checkpoint``: the checkpoint they were exported from (default: the run's latest); ``name``: the model's name
    (default: the run's or the folder's); ``source``: the pipeline folder the weights were copied from (``ldm
    export``), whose evaluation also counts.
    """
    pipeline_dir = Path(pipeline_dir)
    if run is None:
        run = run_of(pipeline_dir) or (run_of(source) if source is not None else None)
    run = RunFolder(run) if run is not None else None
    id2label = (_read_json(pipeline_dir / "model_index.json") or {}).get("id2label") or {}
    classes = [str(id2label[str(i)]) for i in range(len(id2label))]
    facts = CardFacts(
        name=name or (run.name if run is not None else RunFolder.display_name(pipeline_dir)),
        classes=classes,
        card_dir=pipeline_dir,
    )
    _pipeline_facts(facts, pipeline_dir)
    if run is not None:
        _run_facts(facts, run, Path(checkpoint) if checkpoint is not None else None)
    src = Path(source) if source is not None else None
    facts.evaluation = _evaluation(eval_candidates(pipeline_dir, run, src), pipeline_dir)
    return facts


# ---------------------------------------------------------------------------------------------------------------------
# the text


def _num(x: Any, decimals: int = 2) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "n/a"
    return f"{x:.{decimals}f}"


def render_header(license: str = LICENSE_UNSET, synthetic: bool = False) -> str:
    """The YAML front matter (with its ``---`` lines); an unset licence carries a comment saying how to set it."""
    from huggingface_hub import ModelCardData

    tags = [*TAGS, *(["synthetic-data"] if synthetic else [])]
    data = ModelCardData(library_name="diffusers", pipeline_tag=PIPELINE_TAG, license=license, tags=tags)
    yaml = data.to_yaml()
    if license == LICENSE_UNSET:
        yaml = re.sub(rf"^license: {LICENSE_UNSET}$", f"license: {LICENSE_UNSET}  # {LICENSE_HELP}", yaml, flags=re.M)
    return f"---\n{yaml}\n---\n"


def _summary(f: CardFacts) -> list[str]:
    size = f"{f.image_size}x{f.image_size}" if f.image_size else "unknown-size"
    colour = {1: "greyscale", 3: "RGB"}.get(f.channels or 0, "")
    what = " ".join(x for x in (size, colour) if x)
    unet = f"a UNet of {f.unet_parameters / 1e6:.2g} M parameters" if f.unet_parameters else "a UNet"
    latents = f" on {'x'.join(map(str, f.latent_shape))} latents" if f.latent_shape else ""
    lines = [
        f"# {f.name}",
        "",
        f"A class-conditional latent diffusion model ({unet}{latents}), trained with the `ldm` framework. It "
        f"generates {what} images of one of {len(f.classes)} classes, chosen by name, with classifier-free guidance.",
    ]
    if not f.has_run:
        lines += [
            "",
            "This folder was exported without the run folder it was trained in: its training data and recipe are "
            "unknown here.",
        ]
    return lines


def _classes(f: CardFacts) -> list[str]:
    counts = f.counts or {}
    lines = ["", "## Classes", "", "| id | class | training images |", "|---|---|---|"]
    for i, name in enumerate(f.classes):
        lines.append(f"| {i} | {name} | {counts.get(name, 'unknown')} |")
    if counts:
        lines.append(f"| | **total** | {sum(int(counts.get(n, 0)) for n in f.classes)} |")
    return lines


def _data(f: CardFacts) -> list[str]:
    lines = ["", "## Training data", ""]
    if f.data_dir:
        folder = shown_path(f.data_dir, f.card_dir)
        relative = folder.startswith(("./", "../"))
        note = (
            "relative to this folder"
            if relative
            else f"outside the workspace: the run's `{RunFolder.INPUTS}` has its path"
        )
        lines.append(f"- Folder: `{folder}` ({note})")
    else:
        lines.append("- Folder: unknown" + (" (the latent cache names no image folder)" if f.has_run else ""))
    if f.data_fingerprint:
        lines.append(
            f"- Fingerprint: `{f.data_fingerprint[:16]}` (relative paths, sizes and modification times of the images "
            "used; it changes when the data does)"
        )
    if f.synthetic:
        lines.append(
            "- Synthetic: yes, drawn by `ldm data synth-faces` (its marker file is in the folder): the project's "
            "procedurally drawn cartoon faces, which show no real person."
        )
    else:
        lines.append("- Synthetic: not known to be. Assume the images may show real people.")
    return lines


def _recipe(f: CardFacts) -> list[str]:
    lines = ["", "## Training", ""]
    cfg = f.config
    if cfg is None:
        why = f" (the run has no readable {RunFolder.CONFIG})" if f.has_run else ""
        return [*lines, f"The training recipe is unknown{why}."]
    tc, dc = cfg.training, cfg.diffusion
    unet = f"preset `{cfg.unet.preset}`" + (f", overrides {cfg.unet.kwargs}" if cfg.unet.kwargs else "")
    rows = [("UNet", unet)]
    if f.step is not None:
        more = f" in {f.segments} segments (continued {f.segments - 1}x)" if (f.segments or 0) > 1 else ""
        rows.append(("steps", f"{f.step}{more}"))
    if f.seconds is not None:
        dev = f.device or {}
        on = f" on {dev.get('kind') or dev.get('device')}" if dev else ""
        on += f" ({dev['name']})" if dev.get("name") else ""
        on += f", {f.num_processes} processes" if (f.num_processes or 1) > 1 else ""
        took = f"{f.seconds / 60:.1f} min" if f.seconds >= 60 else f"{f.seconds:.0f} s"
        rows.append(("training time", f"{took}{on}"))
    accumulation = f" x {tc.gradient_accumulation_steps} accumulated" if tc.gradient_accumulation_steps > 1 else ""
    objective = f"prediction_type `{dc.prediction_type}`, loss `{dc.loss}`"
    objective += f", min-SNR gamma {dc.snr_gamma:g}" if dc.snr_gamma else ""
    objective += f", {dc.timestep_sampling} timesteps on a {dc.num_train_timesteps}-step {dc.beta_schedule} schedule"
    objective += f", label dropout {dc.label_dropout:g} (for classifier-free guidance)"
    lr = f"{tc.learning_rate:g} peak, {tc.optimizer}, {tc.lr_schedule} after {tc.warmup_steps} warm-up steps"
    rows += [
        ("learning rate", lr),
        ("batch", f"{tc.batch_size} latents{accumulation} per step"),
        ("precision", _PRECISION.get(f.precision or "", f"{tc.mixed_precision} (as configured)")),
        ("objective", objective),
        ("EMA", f"decay {tc.ema_decay:g}" if tc.ema else "off (raw weights)"),
        ("augmentation", "horizontal flips" if tc.hflip else "none"),
        ("seed", str(tc.seed)),
    ]
    if f.autoencoder:
        kind = f" ({f.autoencoder_class})" if f.autoencoder_class else ""
        rows.append(("autoencoder", f"`{shown_path(f.autoencoder, f.card_dir)}`{kind}"))
    return [*lines, "| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def render_evaluation(ev: Evaluation | None, card_dir: Path) -> str:
    """The evaluation section, between :data:`EVAL_BEGIN` and :data:`EVAL_END`."""
    lines = [EVAL_BEGIN, "## Evaluation", ""]
    hint = "`ldm eval --run <this folder or its run> --real <the training images>`"
    if ev is None:
        lines.append(f"Not evaluated yet: {hint} measures KID, FID, class accuracy and memorisation here.")
    elif ev.state == "stale":
        lines.append(f"The `{RunFolder.EVAL}` found measured other weights (an earlier export): run {hint} again.")
    else:
        r = ev.result
        s, real = r.get("settings") or {}, r.get("real") or {}
        data = shown_path(resolve_recorded(real.get("data_dir"), ev.path.parent), card_dir)
        acc, clf = r.get("class_accuracy") or {}, r.get("classifier") or {}
        mem = r.get("memorisation") or {}
        lines += [
            f"Measured by `ldm eval`: {s.get('num_samples')} generated images ({s.get('scheduler')}, "
            f"{s.get('num_inference_steps')} steps, guidance {s.get('guidance_scale')}) against "
            f"{real.get('num_images')} real images" + (f" of `{data}`." if data else "."),
            "",
            "| metric | value |",
            "|---|---|",
            f"| KID (lower is better) | {_num(r.get('kid'), 4)} ± {_num(r.get('kid_std'), 4)} |",
            f"| FID (lower is better; noisy below a few thousand images) | {_num(r.get('fid'), 1)} |",
            f"| class accuracy of generated images | {_num(acc.get('overall'))} (the classifier's accuracy on "
            f"held-out real images: {_num(clf.get('holdout_accuracy'))}, chance {_num(clf.get('chance'))}) |",
            f"| memorisation: share of generated images closer to a training image than real images are to each "
            f"other | {_num(mem.get('share_below_threshold'))} |",
        ]
        if ev.state == "unverified":
            lines += ["", f"(This `{RunFolder.EVAL}` does not record which weights it measured.)"]
    lines.append(EVAL_END)
    return "\n".join(lines)


def _usage(f: CardFacts) -> list[str]:
    from ldm.config import SamplingConfig

    sc = f.config.sampling if f.config is not None else SamplingConfig()
    first = f.classes[0] if f.classes else "0"
    return [
        "",
        "## How to use",
        "",
        "```python",
        "from ldm.diffusion.pipeline import ClassConditionalLatentDiffusionPipeline",
        "",
        'pipe = ClassConditionalLatentDiffusionPipeline.from_pretrained("path/to/this/folder")',
        f"images = pipe([{json.dumps(first)}], num_inference_steps={sc.num_inference_steps}, "
        f"guidance_scale={float(sc.guidance_scale)!r}, seeds=[0]).images",
        "```",
        "",
        f"or `ldm sample --run path/to/this/folder --class {json.dumps(first)} --out samples/`. Plain diffusers loads "
        "it with `DiffusionPipeline.from_pretrained(dir, custom_pipeline=dir, trust_remote_code=True)` "
        "(the `ldm` package must be installed).",
    ]


def _use_and_limits(f: CardFacts, consent: bool) -> list[str]:
    lines = [
        "",
        "## Intended use and limitations",
        "",
        "- Made for learning and experiments: generating images of the classes above, the way the training images "
        "show them. It knows nothing beyond those classes.",
        "- A small model trained on a small folder of images: its images can come close to training images, or copy "
        "them (the memorisation share of the evaluation measures how often). Check before publishing any.",
        "- Generated images are not photos of anyone. Do not use them to pass as real people, to identify anyone, or "
        "to make images of a person without their consent.",
        "- It reproduces the biases and gaps of its training images.",
        "",
        "## Licence",
        "",
        f"Set by the `license:` field of the header above (`{LICENSE_UNSET}` until you choose one). The licence of "
        "the training images, and the consent of the people they show, limit what you may allow.",
    ]
    if not f.synthetic:
        lines += [
            "",
            "## People pictured",
            "",
            "This project is made for photos of faces, and nothing here tells whether these images show real people, "
            "so it asks every time. Before sharing this model or its images, confirm:",
            "",
            f"- [{'x' if consent else ' '}] {CONSENT}",
        ]
    return lines


def render_card(facts: CardFacts, license: str = LICENSE_UNSET, consent: bool = False) -> str:
    """The whole card; ``license`` and ``consent`` (a ticked box) are the user's choices, carried over."""
    lines = [
        *_summary(facts),
        *_classes(facts),
        *_data(facts),
        *_recipe(facts),
        "",
        render_evaluation(facts.evaluation, facts.card_dir),
        *_usage(facts),
        *_use_and_limits(facts, consent),
        "",
    ]
    return render_header(license, facts.synthetic) + "\n" + "\n".join(lines)


def user_choices(card_text: str | None) -> dict[str, Any]:
    """What the user set in a card: ``license`` (when not the placeholder) and ``consent`` (the box ticked)."""
    if not card_text:
        return {}
    from huggingface_hub import ModelCard

    out: dict[str, Any] = {}
    try:
        license = ModelCard(card_text, ignore_metadata_errors=True).data.license
    except Exception:  # a header the user broke: nothing to carry over
        license = None
    if isinstance(license, str) and license.strip() and license.strip() != LICENSE_UNSET:
        out["license"] = license.strip()
    if re.search(rf"^- \[[xX]\] {re.escape(CONSENT)}", card_text, flags=re.M):
        out["consent"] = True
    return out


def _read_card(folder: str | Path | None) -> str | None:
    if folder is None:
        return None
    try:
        return (Path(folder) / CARD).read_text(encoding="utf-8")
    except OSError:
        return None


def write_model_card(
    pipeline_dir: str | Path,
    run: str | Path | RunFolder | None = None,
    checkpoint: str | Path | None = None,
    *,
    name: str | None = None,
    source: str | Path | None = None,
    previous: str | Path | None = None,
) -> Path:
    """Write ``pipeline_dir/README.md`` (atomically) from :func:`gather_facts`; returns its path.

    ``previous``: the folder whose card held the user's choices for this model (licence, consent box; default
    ``source``, else ``pipeline_dir``). A ``source`` pipeline with a card of its own and no run behind it keeps that
    card (it knows more than the folder does), with its evaluation section refreshed.
    """
    pipeline_dir = Path(pipeline_dir)
    path = pipeline_dir / CARD
    facts = gather_facts(pipeline_dir, run, checkpoint, name=name, source=source)
    source_card = _read_card(source)
    if not facts.has_run and source_card and EVAL_BEGIN in source_card and EVAL_END in source_card:
        atomic_write_text(path, _replace_evaluation(source_card, render_evaluation(facts.evaluation, pipeline_dir)))
        return path
    choices = user_choices(_read_card(previous if previous is not None else source or pipeline_dir))
    atomic_write_text(path, render_card(facts, **choices))
    return path


def _replace_evaluation(card: str, section: str) -> str:
    start, end = card.index(EVAL_BEGIN), card.index(EVAL_END) + len(EVAL_END)
    return card[:start] + section + card[end:]


def refresh_model_card(pipeline_dir: str | Path, eval_path: str | Path | None = None) -> Path | None:
    """After ``ldm eval``: rewrite the evaluation section of ``pipeline_dir/README.md`` from ``eval_path`` (default:
    where ``ldm eval`` writes for this folder), leaving the rest of the card as it is. A folder without a card gets a
    whole one; a card without the evaluation section (written by hand) is left alone (returns None)."""
    pipeline_dir = Path(pipeline_dir)
    card = _read_card(pipeline_dir)
    if card is None:
        return write_model_card(pipeline_dir)
    if EVAL_BEGIN not in card or EVAL_END not in card:
        return None
    candidates = eval_candidates(pipeline_dir, run_of(pipeline_dir))
    if eval_path is not None:
        candidates.insert(0, Path(eval_path))
    ev = _evaluation(candidates, pipeline_dir)
    path = pipeline_dir / CARD
    atomic_write_text(path, _replace_evaluation(card, render_evaluation(ev, pipeline_dir)))
    return path
