"""The Gradio app: Inference, Training and Runs tabs over one workspace folder.

    python app.py --workspace ~/faces-project          # or: ldm app --workspace ~/faces-project
    # then open http://127.0.0.1:7860

    demo = build_app(Path("."))                        # the Blocks, for tests and embedding
    launch_app(Path("."), port=0, prevent_thread_lock=True)

The page is built by :func:`build_app`; every handler is a method of :class:`ldm.app.handlers.LdmApp` with an
``api_name``, so the app is also an API (``gradio_client``). Training runs in a detached worker process
(:mod:`ldm.app.jobs`): the page stays responsive, and a reload or an app restart reattaches to the running job.
Only folders inside the workspace are accepted; the server listens on 127.0.0.1 unless told otherwise and never
creates a public share link.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ldm.app.handlers import NO_MODEL_HELP, NO_NEGATIVE, NO_PICK, LdmApp
from ldm.app.settings import PREPROCESS, TRAIN_HERE, TrainSettings, gpu_count
from ldm.app.text2image import text2image_tab
from ldm.choices import SCHEDULER_NAMES
from ldm.config import SamplingConfig

DEFAULT_SETTINGS_FILE = "app-settings.yaml"
# raw loss pale, its moving average strong; whole steps and short loss labels (one point once gave "10.000000")
LOSS_PLOT = {"color_map": {"loss": "#9fb3c8", "smoothed": "#0d9488"}, "x_axis_format": "d", "y_axis_format": ".4~f"}

CSS = """
.gradio-container { max-width: 1180px !important; margin: auto; }
#ldm-header h1 { font-size: 1.6rem; margin: 0.2rem 0 0 0; letter-spacing: -0.01em; }
#ldm-header p { margin: 0.1rem 0 0.4rem 0; color: var(--body-text-color-subdued); }
.ldm-progress { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; margin: 6px 0; }
.ldm-bar { height: 100%; background: linear-gradient(90deg, var(--primary-500), var(--secondary-500));
  border-radius: 7px; transition: width 0.6s ease; width: 0; }
.ldm-bar-busy { width: 35% !important; animation: ldm-slide 1.4s ease-in-out infinite; }
@keyframes ldm-slide { 0% { margin-left: -35%; } 100% { margin-left: 100%; } }
.ldm-state-failed .ldm-bar { background: #d64545; }
.ldm-state-stopped .ldm-bar { background: var(--neutral-400); }
.ldm-progress-text { font-size: 0.92rem; font-variant-numeric: tabular-nums; }
.ldm-progress-msg { font-size: 0.85rem; color: var(--body-text-color-subdued); }
#ldm-log textarea { font-family: var(--font-mono); font-size: 0.78rem; }
#ldm-notice { border-left: 4px solid var(--primary-500); padding-left: 0.8rem; }
#ldm-notice:empty, #ldm-notice .prose:empty { display: none; }
#ldm-header code { white-space: normal !important; overflow-wrap: anywhere; word-break: break-all; }
/* the image blocks' floating label would cover the top of figures that carry their own title */
#ldm-snapshot img, #ldm-sample img, #ldm-run-sample img, #ldm-nearest-figure img,
#ldm-memorisation img { padding-top: 30px; }
/* the columns are shares of the table's width (LdmApp.runs_table), so the table has no width of its own: ask for the
   whole page, capped by its container */
#ldm-runs-table { min-width: 0 !important; width: 100vw; max-width: 100%; overflow-x: auto; }
@media (max-width: 640px) {
  #ldm-runs-table { max-width: calc(100vw - 16px); }
  /* the columns are shares of the table's width (LdmApp.runs_table): a smaller proportional font and tighter cells
     let them wrap at word ends rather than mid-word */
  #ldm-runs-table [role="grid"], #ldm-runs-table [role="grid"] span { font-family: var(--font); font-size: 12px; }
  #ldm-runs-table .cell-wrap { padding: 6px 4px !important; }
  #ldm-gallery .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
  #ldm-header h1 { font-size: 1.25rem; }
  .ldm-stack { flex-direction: column !important; }
  .ldm-stack > * { min-width: 0 !important; width: 100% !important; }
}
"""

# gradio scopes `css` to the page's content; the page frame's side padding (32 px) is outside it, so the phone-width
# rule for it goes into <head> unscoped
HEAD = """<style>
@media (max-width: 640px) {
  .gradio-container > .main { padding-left: 6px !important; padding-right: 6px !important; }
}
</style>"""


def make_theme() -> gr.themes.Base:
    """A calm teal/amber theme with fonts bundled in gradio (nothing is fetched from Google Fonts)."""
    font = [gr.themes.LocalFont("IBM Plex Sans"), "ui-sans-serif", "system-ui", "sans-serif"]
    mono = [gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "monospace"]
    theme = gr.themes.Base(
        primary_hue=gr.themes.colors.teal,
        secondary_hue=gr.themes.colors.amber,
        neutral_hue=gr.themes.colors.slate,
        radius_size=gr.themes.sizes.radius_md,
        font=font,
        font_mono=mono,
    )
    return theme.set(
        body_background_fill="#f6f8f8",
        block_border_width="1px",
        block_shadow="0 1px 2px rgba(16, 42, 67, 0.06)",
        button_primary_background_fill="*primary_600",
        button_primary_background_fill_hover="*primary_700",
        button_primary_text_color="white",
        button_secondary_background_fill="white",
        slider_color="*primary_600",
        checkbox_background_color_selected="*primary_600",
    )


class SettingsForm:
    """The Training tab's controls, keyed by :class:`TrainSettings` field name (never matched by position).

    Each control shows its field's default; a choice field offers the labels of its table (:mod:`ldm.choices`).
    :meth:`in_field_order` lists them in field order, the order of the handlers' values and the API's parameters.
    """

    def __init__(self) -> None:
        from ldm.app.recipes import default_settings

        self.controls: dict[str, Any] = {}
        self.defaults = default_settings()

    def add(self, kind: Callable[..., Any], name: str, label: str, **kwargs: Any) -> Any:
        """Build the control ``kind`` (a gradio component class) of settings field ``name``."""
        if name not in TrainSettings.names():
            raise ValueError(f"TrainSettings has no field {name!r}; fields: {', '.join(TrainSettings.names())}")
        choices = TrainSettings.choices(name)
        if choices is not None:
            kwargs.setdefault("choices", choices)
        self.controls[name] = kind(label=label, value=getattr(self.defaults, name), **kwargs)
        return self.controls[name]

    def __getitem__(self, name: str) -> Any:
        return self.controls[name]

    def in_field_order(self) -> list[Any]:
        """Every control, in :meth:`TrainSettings.names` order; ValueError naming any field without a control."""
        missing = [name for name in TrainSettings.names() if name not in self.controls]
        if missing:
            raise ValueError(f"the Training tab has no control for TrainSettings field(s): {', '.join(missing)}")
        return [self.controls[name] for name in TrainSettings.names()]


@dataclass
class InferenceTab:
    """The Inference tab's components that other tabs and the page load update."""

    model: Any
    notice: Any


@dataclass
class TrainingTab:
    """The Training tab's components that other tabs and the page load update."""

    fields: list[Any]  # the settings controls, in TrainSettings field order
    folders: list[Any]  # data, latent and autoencoder pickers, refilled from the workspace
    message: Any
    timer: Any
    live: list[Any]  # what a poll refreshes: progress, loss plot, sample grid, log, message, timer, seen


@dataclass
class RunsTab:
    """The Runs tab's components that the page load and opening the tab refill."""

    table: Any
    pick: Any
    details: list[Any]  # what show_run fills: details text, newest sample grid, loss curve, memorisation figure
    compare: Any  # the runs to compare (choices refilled with the table)


def inference_tab(app: LdmApp) -> InferenceTab:
    """Generate images of a class with a trained model: gallery, timestep snapshots, PNGs with their parameters."""
    sampling = SamplingConfig()
    notice = gr.Markdown(elem_id="ldm-notice")
    with gr.Row(elem_classes="ldm-stack"):
        model = gr.Dropdown(
            label="Model",
            choices=[],
            info="A run (runs/NAME with an exported pipeline) or an exported pipeline folder",
            allow_custom_value=True,  # choices change at run time; the handler checks the path
            scale=4,
            elem_id="ldm-model",
        )
        refresh = gr.Button("Refresh", scale=1, min_width=90)
    model_note = gr.Markdown()
    with gr.Row(elem_classes="ldm-stack"):
        with gr.Column(scale=2, min_width=280):
            # the one class input: pick, type (filters the list; case and spaces do not matter) or click a chip below
            class_choice = gr.Dropdown(
                label="Class",
                choices=[],
                info="Pick or type the class to generate (case and spaces do not matter)",
                allow_custom_value=True,
                filterable=True,
                elem_id="ldm-class",
            )
            # the API's class_text parameter (used only when the Class box is empty); not shown on the page
            class_text = gr.Textbox(visible=False)
            # chips drawn as plain text (a Dropdown draws a value only when it is among the choices it was built with)
            class_examples = gr.Dataset(
                components=["textbox"], samples=[], label="Classes of this model (click one)", elem_id="ldm-chips"
            )
            negative = gr.Dropdown(
                label="Negative class",
                choices=[NO_NEGATIVE],
                value=NO_NEGATIVE,
                info="Guidance pushes away from this class instead of from 'no class'",
                allow_custom_value=True,
                elem_id="ldm-negative",
            )
            with gr.Row():
                num_images = gr.Slider(
                    1, 16, value=sampling.num_images, step=1, label="Images", info="How many to draw"
                )
                sampler = gr.Dropdown(
                    label="Sampler",
                    choices=list(SCHEDULER_NAMES),
                    value=sampling.scheduler,
                    info="dpm++ is fast and good; ddpm is the slow original",
                )
            steps = gr.Slider(
                1,
                100,
                value=sampling.num_inference_steps,
                step=1,
                label="Steps",
                info="Denoising steps: more is slower and a little finer (20-30 is plenty for dpm++)",
                elem_id="ldm-steps",
            )
            guidance = gr.Slider(
                1.0,
                10.0,
                value=sampling.guidance_scale,
                step=0.25,
                label="Guidance scale",
                info="How strongly to follow the class (1 = off, 2-5 usual)",
            )
            with gr.Row():
                seed = gr.Number(value=sampling.seed, precision=0, label="Seed", info="Same seed, same images")
                randomize = gr.Checkbox(value=True, label="Randomise seed", info="Draw a new seed on every Generate")
            generate = gr.Button("Generate", variant="primary", elem_id="ldm-generate")
            message = gr.Markdown(elem_id="ldm-message")
        with gr.Column(scale=3, min_width=280):
            gallery = gr.Gallery(
                label="Images",
                columns=4,
                height="auto",
                object_fit="contain",
                type="filepath",  # the check reads the PNGs (and the model they record)
                elem_id="ldm-gallery",
            )
            with gr.Accordion("Closest training images (memorisation check)", open=False, elem_id="ldm-nearest"):
                gr.Markdown(
                    "Compares generated images with the model's training images, as **Evaluate** does (Inception "
                    "features), and shows the three closest of each with their distances. An image closer than "
                    "training images are to each other is flagged: it may copy one. Click an image above to pick it."
                )
                with gr.Row():
                    check_one = gr.Button("Check selected image", variant="primary", elem_id="ldm-check-selected")
                    check_all = gr.Button("Check all images", elem_id="ldm-check-all")
                picked_note = gr.Markdown(NO_PICK, elem_id="ldm-picked")
                nearest_text = gr.Markdown(elem_id="ldm-nearest-text")
                nearest_figure = gr.Image(
                    label="Generated images beside their closest training images",
                    type="pil",
                    format="png",
                    elem_id="ldm-nearest-figure",
                )
            # the gallery image picked (0-based; empty: the first), the check's API parameter; not shown on the page
            picked = gr.Number(value=None, precision=0, visible=False)
            snapshot = gr.Image(label="Timestep snapshots (first image)", type="filepath", elem_id="ldm-snapshot")
            files = gr.File(label="Download PNGs (parameters embedded)", file_count="multiple", elem_id="ldm-files")
            params = gr.Code(label="Parameters", language="json", wrap_lines=True, elem_id="ldm-params")
    class_examples.click(lambda sample: sample[0], class_examples, class_choice, api_visibility="private")
    refresh.click(app.refresh_models, model, [model, notice], api_name="refresh_models")
    model.change(app.select_model, model, [class_choice, negative, class_examples, model_note], api_name="classes")
    generate.click(
        app.generate,
        [model, class_choice, class_text, num_images, sampler, steps, guidance, negative, seed, randomize],
        [gallery, snapshot, files, params, message, seed],
        api_name="generate",
        concurrency_limit=1,
    ).then(
        lambda: (None, NO_PICK),  # a new gallery: nothing picked in it yet
        None,
        [picked, picked_note],
        api_visibility="private",
    ).then(
        app.flag_generated,
        [model, gallery, message],
        [gallery, message, nearest_text, nearest_figure],
        api_name="flag_generated",
        show_progress="hidden",
    )
    gallery.select(app.pick_image, None, [picked, picked_note], api_visibility="private", show_progress="hidden")
    nearest_out = [nearest_figure, nearest_text, gallery]
    check_one.click(
        app.check_memorisation,
        [model, gallery, picked],
        nearest_out,
        api_name="check_memorisation",
        concurrency_limit=1,
    )
    check_all.click(
        app.check_all_images, [model, gallery], nearest_out, api_name="check_memorisation_all", concurrency_limit=1
    )
    return InferenceTab(model=model, notice=notice)


def training_tab(app: LdmApp) -> TrainingTab:
    """Settings of a training job, Start / Stop / Resume, and its live progress, loss curve, samples and log."""
    with gr.Row(elem_classes="ldm-stack"):
        with gr.Column(scale=2, min_width=280):
            from ldm.app.recipes import CUSTOM, recipe_names

            names = recipe_names()
            recipe = gr.Dropdown(
                label="Start from a recipe",
                choices=names,
                value="demo" if "demo" in names else CUSTOM,
                info="Fills the settings below with a measured recipe; your data folder and run name stay",
                elem_id="ldm-recipe",
            )
            form = SettingsForm()
            note = app.recipe_note(recipe.value, form.defaults.max_minutes, form.defaults.max_steps)
            recipe_note = gr.Markdown(note, elem_id="ldm-recipe-note")
            folder = dict(choices=[], allow_custom_value=True)  # discovered at run time; free text too
            gr.Markdown("### Data")
            form.add(
                gr.Dropdown,
                "data_dir",
                "Data folder",
                info="Folder of class subfolders of images, inside the workspace (e.g. data/faces)",
                **folder,
                elem_id="ldm-data-dir",
            )
            form.add(
                gr.Radio,
                "preprocess",
                "Preprocess",
                info="yes: encode the data folder into a latent cache first; no: use the latent folder",
                choices=list(PREPROCESS),
                elem_id="ldm-preprocess",
            )
            form.add(
                gr.Dropdown,
                "latent_dir",
                "Latent folder",
                info="Latent cache: written when preprocessing (empty = data/latents/RUN), else read",
                **folder,
                elem_id="ldm-latent-dir",
            )
            form.add(
                gr.Dropdown,
                "autoencoder",
                "Autoencoder",
                info="Encodes images to latents: train one on your data here, or a folder / hub id",
                choices=[TRAIN_HERE],
                allow_custom_value=True,
            )
            gr.Markdown("### Model and training")
            with gr.Row():
                form.add(gr.Dropdown, "preset", "Model preset", info="UNet size", elem_id="ldm-preset")
                form.add(gr.Checkbox, "ema", "EMA", info="Average the weights (smoother samples)")
            with gr.Row():
                form.add(gr.Radio, "loss", "Loss", info="MSE: classic; MAE (L1): robust; Huber: in between")
                form.add(gr.Radio, "optimizer", "Optimizer", info="AdamW is usual")
            with gr.Row():
                form.add(gr.Number, "epochs", "Epochs", info="Passes over the data (0 = no limit)", precision=0)
                form.add(
                    gr.Number,
                    "batch_size",
                    "Batch size",
                    info="Latents per step",
                    precision=0,
                    elem_id="ldm-batch-size",
                )
                form.add(gr.Number, "learning_rate", "Learning rate", info="Peak rate (3e-4 usual)")
            with gr.Row():
                form.add(
                    gr.Slider,
                    "label_dropout",
                    "Guidance dropout",
                    info="Share of steps without the class, for guidance (0.1 usual)",
                    minimum=0.0,
                    maximum=0.5,
                    step=0.01,
                )
                form.add(
                    gr.Number,
                    "max_minutes",
                    "Max minutes",
                    info="Time budget (0 = none)",
                    elem_id="ldm-max-minutes",
                )
                form.add(
                    gr.Number,
                    "max_steps",
                    "Max steps",
                    info="Step budget (0 = none)",
                    precision=0,
                    elem_id="ldm-max-steps",
                )
            form.add(
                gr.Textbox,
                "run_name",
                "Run name",
                info="The run goes to runs/NAME",
                elem_id="ldm-run-name",
            )
            form.add(
                gr.Textbox,
                "extra",
                "Extra settings",
                info="More config keys as key=value (one per line); see configs/*.yaml",
                lines=2,
                placeholder="training.sample_every=100\ndata.image_size=32",
                elem_id="ldm-extra",
            )
            gpus = gpu_count()
            form.add(
                gr.Number,
                "processes",
                "Processes",
                info=f"Training processes, one per GPU ({gpus} here): N processes train as one with N x the batch",
                precision=0,
                minimum=1,
                maximum=max(gpus, 1),
                visible=gpus > 1,  # one GPU or none: always one process
                elem_id="ldm-processes",
            )
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="ldm-start")
                stop = gr.Button("Stop", variant="stop", elem_id="ldm-stop")
                resume = gr.Button("Resume", elem_id="ldm-resume")
            gr.Markdown(
                "Resume acts on the run named above: a stopped run finishes its budget; a finished one trains "
                "*Max minutes* (or *Max steps*) more.",
                elem_classes="ldm-hint",
            )
            with gr.Accordion("Sweep: try several settings, one run each", open=False, elem_id="ldm-sweep"):
                gr.Markdown(
                    "Trains one run per combination of the values below, each with the settings above and "
                    "*minutes per run*; they land in runs/sweeps/NAME and the **Runs** tab compares them."
                )
                from ldm.app.settings import SWEEPABLE

                sweep_keys = []
                for i in (1, 2):
                    with gr.Row():
                        key = gr.Dropdown(
                            choices=["", *SWEEPABLE], value=SWEEPABLE[0] if i == 1 else "", label=f"Setting {i}",
                            allow_custom_value=True, elem_id=f"ldm-sweep-key{i}",
                        )  # fmt: skip
                        values = gr.Textbox(
                            label="Values", placeholder="0.0005, 0.001, 0.002" if i == 1 else "(optional)",
                            elem_id=f"ldm-sweep-values{i}",
                        )  # fmt: skip
                    sweep_keys += [key, values]
                with gr.Row():
                    sweep_name = gr.Textbox(value="sweep", label="Sweep name", elem_id="ldm-sweep-name")
                    sweep_minutes = gr.Number(value=3.0, label="Minutes per run", elem_id="ldm-sweep-minutes")
                    sweep_eval = gr.Number(
                        value=0, precision=0, label="Evaluate with N images", info="0 = no evaluation",
                        elem_id="ldm-sweep-eval",
                    )  # fmt: skip
                with gr.Row():
                    start_sweep = gr.Button("Start sweep", variant="primary", elem_id="ldm-start-sweep")
                    continue_sweep = gr.Button("Continue sweep", elem_id="ldm-continue-sweep")
            with gr.Accordion("Save / load settings", open=False):
                settings_file = gr.Textbox(
                    value=DEFAULT_SETTINGS_FILE,
                    label="Settings file",
                    info="A .yaml file inside the workspace",
                )
                with gr.Row():
                    save = gr.Button("Save settings")
                    load = gr.Button("Load settings")
            train_message = gr.Markdown(elem_id="ldm-train-message")
        with gr.Column(scale=3, min_width=280):
            progress = gr.HTML(elem_id="ldm-progress")
            loss_plot = gr.LinePlot(
                x="step",
                y="loss",
                color="series",
                label="Loss",
                elem_id="ldm-loss",
                **LOSS_PLOT,
            )
            sample = gr.Image(label="Newest sample grid (one row per class)", type="pil", elem_id="ldm-sample")
            log = gr.Textbox(label="Log (newest lines)", lines=12, max_lines=40, autoscroll=True, elem_id="ldm-log")
    timer = gr.Timer(LdmApp.POLL_SECONDS, active=False)  # its interval set by each poll (LdmApp.poll)
    seen = gr.State({})  # what this page shows already (see LdmApp.poll)
    fields = form.in_field_order()
    folders = [form["data_dir"], form["latent_dir"], form["autoencoder"]]
    live = [progress, loss_plot, sample, log, train_message, timer, seen]
    start.click(app.start_training, fields, [train_message, timer], api_name="start_training").then(
        app.poll, seen, live, api_visibility="private"
    )
    stop.click(app.stop_training, None, train_message, api_name="stop_training").then(
        app.poll, seen, live, api_visibility="private"
    )
    resume.click(app.resume_training, fields, [train_message, timer], api_name="resume_training").then(
        app.poll, seen, live, api_visibility="private"
    )
    timer.tick(app.poll, seen, live, api_name="poll", show_progress="hidden")
    recipe.input(app.pick_recipe, [recipe, *fields], [*fields, recipe_note], api_name="pick_recipe")
    budget = [recipe, form["max_minutes"], form["max_steps"]]
    for control in budget[1:]:
        control.change(app.recipe_note, budget, recipe_note, api_visibility="private", show_progress="hidden")
    save.click(app.save_settings, [settings_file, *fields], train_message, api_name="save_settings")
    load.click(app.load_settings, settings_file, [*fields, train_message], api_name="load_settings")
    sweep_inputs = [sweep_name, *sweep_keys, sweep_minutes, sweep_eval, *fields]
    start_sweep.click(app.start_sweep, sweep_inputs, [train_message, timer], api_name="start_sweep").then(
        app.poll, seen, live, api_visibility="private"
    )
    continue_sweep.click(app.continue_sweep, sweep_name, [train_message, timer], api_name="continue_sweep").then(
        app.poll, seen, live, api_visibility="private"
    )
    return TrainingTab(fields, folders, train_message, timer, live)


def runs_tab(app: LdmApp, tabs: gr.Tabs, inference: InferenceTab, training: TrainingTab) -> RunsTab:
    """Every run of the workspace: status table, details, newest samples and loss; use one or resume it."""
    with gr.Row(elem_classes="ldm-stack"):
        run_pick = gr.Dropdown(
            label="Run",
            choices=[],
            info="A run folder of the workspace",
            scale=4,
            allow_custom_value=True,
            elem_id="ldm-run-pick",
        )
        runs_refresh = gr.Button("Refresh", scale=1, min_width=90, elem_id="ldm-runs-refresh")
        use = gr.Button("Use for inference", variant="primary", scale=2, min_width=150, elem_id="ldm-use")
    with gr.Row(elem_classes="ldm-stack"):
        more_minutes = gr.Number(
            value=2.0,
            label="Minutes more",
            info="For a finished run: how much longer Resume trains it",
            minimum=0,
            scale=1,
            min_width=150,
            elem_id="ldm-more-minutes",
        )
        resume_run = gr.Button("Resume / continue training", scale=2, min_width=150, elem_id="ldm-resume-run")
    runs_table = gr.Dataframe(label="Runs (newest first)", interactive=False, wrap=True, elem_id="ldm-runs-table")
    run_details = gr.Markdown(elem_id="ldm-run-details")
    with gr.Row(elem_classes="ldm-stack"):
        run_sample = gr.Image(label="Newest sample grid", type="pil", elem_id="ldm-run-sample")
        run_loss = gr.LinePlot(x="step", y="loss", color="series", label="Loss curve", **LOSS_PLOT)
    with gr.Row(elem_classes="ldm-stack"):
        eval_samples = gr.Number(value=200, precision=0, label="Images to evaluate with", elem_id="ldm-eval-samples")
        evaluate = gr.Button("Evaluate (KID, FID, class accuracy, memorisation)", elem_id="ldm-evaluate")
    memorisation = gr.Image(
        label="Memorisation check: generated images beside their nearest training images",
        type="pil",
        elem_id="ldm-memorisation",
    )
    details = [run_details, run_sample, run_loss, memorisation]
    with gr.Accordion("Compare runs", open=False, elem_id="ldm-compare"):
        # the runs of the workspace now (refilled whenever the tab opens or the table is refreshed)
        runs_now = [r.name for r in app.ws.runs() if r.kind != "autoencoder"]
        compare_pick = gr.CheckboxGroup(label="Runs to compare", choices=runs_now, elem_id="ldm-compare-pick")
        compare = gr.Button("Compare", elem_id="ldm-compare-button")
        compare_table = gr.Markdown(elem_id="ldm-compare-table")
        compare_figure = gr.Image(label="Smoothed loss and KID", type="filepath", elem_id="ldm-compare-figure")
        compare_grids = gr.Gallery(
            label="Newest sample grids", columns=2, height="auto", object_fit="contain", elem_id="ldm-compare-grids"
        )
    compare.click(
        app.compare_runs, compare_pick, [compare_figure, compare_table, compare_grids], api_name="compare_runs"
    )
    evaluate.click(
        app.evaluate_run,
        [run_pick, eval_samples],
        [training.message, training.timer, tabs, run_details],
        api_name="evaluate_run",
    ).then(app.poll, training.live[-1], training.live, api_visibility="private")
    # a refresh also redraws the picked run's details: picking the same run again fires no change event
    runs_refresh.click(app.runs_table, run_pick, [runs_table, run_pick], api_name="runs").then(
        app.show_run, run_pick, details, api_visibility="private"
    ).then(app.compare_choices, compare_pick, compare_pick, api_visibility="private")
    run_pick.change(app.show_run, run_pick, details, api_name="run_details")
    use.click(
        app.use_for_inference,
        run_pick,
        [inference.model, tabs, run_details, inference.notice],
        api_name="use_for_inference",
    )
    # any run with a checkpoint, started here or by `ldm train`; progress shows in the Training tab
    resume_run.click(
        app.resume_run,
        [run_pick, more_minutes],
        [training.message, training.timer, tabs, run_details],
        api_name="resume_run",
    ).then(app.poll, training.live[-1], training.live, api_visibility="private")
    return RunsTab(runs_table, run_pick, details, compare_pick)


def build_app(workspace: Path, device: str | None = None) -> gr.Blocks:
    """Build the app's Blocks for ``workspace`` (created if missing). Launch it with :func:`launch_app`."""
    app = LdmApp(workspace, device=device)
    with gr.Blocks(title="ldm: latent diffusion studio") as demo:
        demo.ldm_app = app  # the handlers' state, for tests; nothing is held in module globals
        with gr.Column(elem_id="ldm-header"):
            gr.Markdown(
                "# Latent diffusion studio\n"
                f"Train class-conditional image generators and sample them by class name. "
                f"Workspace: `{app.ws.root}`"
            )
        with gr.Tabs(selected="inference") as tabs:
            with gr.Tab("Inference", id="inference"):
                inference = inference_tab(app)
            with gr.Tab("Training", id="training") as training_tab_block:
                training = training_tab(app)
            with gr.Tab("Runs", id="runs") as runs_tab_block:
                runs = runs_tab(app, tabs, inference, training)
            with gr.Tab("Text to image", id="text2image"):
                text2image_tab(app.text2image)

        def on_load() -> list[Any]:
            """Page (re)load: discover models, runs and folders, and reattach to the running job."""
            model_update, note = app.refresh_models(None)
            folders = app.discovered_folders()
            table, pick = app.runs_table()
            running = app.jobs.current()
            form = app.job_settings() if running else [gr.update() for _ in training.fields]
            return [model_update, note, *folders, table, pick, *form, *app.poll(None)]

        demo.load(
            on_load,
            None,
            [
                inference.model,
                inference.notice,
                *training.folders,
                runs.table,
                runs.pick,
                *training.fields,
                *training.live,
            ],
            api_name="load",
        )
        # opening a tab re-discovers the workspace, so folders and runs made meanwhile (e.g. by the CLI) appear
        training_tab_block.select(app.discovered_folders, None, training.folders, api_visibility="private")
        runs_tab_block.select(app.runs_table, runs.pick, [runs.table, runs.pick], api_visibility="private").then(
            app.show_run, runs.pick, runs.details, api_visibility="private"
        ).then(app.compare_choices, runs.compare, runs.compare, api_visibility="private")
    return demo


def launch_app(
    workspace: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    device: str | None = None,
) -> gr.Blocks:
    """Build and launch the app on ``host:port`` (port None = gradio's default 7860 or the next free one).

    Never creates a public share link. Only the generated images folder is served besides gradio's own files.
    """
    demo = build_app(Path(workspace), device=device)
    app: LdmApp = demo.ldm_app
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=True,  # returns at once; blocking (below) comes after the banner
        quiet=True,  # gradio's banner suggests share=True, which this app never uses
        theme=make_theme(),
        css=CSS,
        head=HEAD,
        allowed_paths=[str(app.outputs)],
        footer_links=["api"],
    )
    if not quiet:
        print(f"ldm app: open {demo.local_url} (workspace {app.ws.root}); Ctrl+C to quit", flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return demo


__all__ = ["CSS", "NO_MODEL_HELP", "build_app", "launch_app", "make_theme"]
