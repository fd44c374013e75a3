"""Every grid and plot the project draws: sample grids, reconstruction grids, snapshot figures, loss and eval plots.

    from ldm.figures import labelled_grid, plot_loss
    labelled_grid([[img_a, img_b], [img_c, img_d]], ["smiling", "sleepy"], title="step 500").save("grid.png")
    plot_loss(metrics_rows, "runs/faces/loss.png")

Grids are labels and titles drawn around ``torchvision.utils.make_grid``; plots are matplotlib ``Figure`` objects
(no pyplot state, so the app's worker threads can draw). Images come in as PIL images or float tensors in [-1, 1].
This module sits at the base of the package: it imports matplotlib, PIL, torch/torchvision and ``ldm.utils`` only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm.utils import atomic_write_bytes

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from PIL import Image


# ---------------------------------------------------------------------------------------------------------------------
# tensors <-> pictures


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float images ``(B, C, H, W)`` in [-1, 1] (C = 1 or 3) -> PIL images (L or RGB), rounded to uint8."""
    from PIL import Image

    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to("cpu").byte().permute(0, 2, 3, 1).numpy()
    if arr.shape[-1] in (1, 2):  # grey; two channels are not a real image: show the first
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a[..., :3], mode="RGB") for a in arr]


def _unit_to_pil(image: torch.Tensor) -> Image.Image:
    """One RGB float image ``(3, H, W)`` in [0, 1] -> PIL RGB."""
    from torchvision.transforms.functional import to_pil_image

    return to_pil_image((image.clamp(0, 1) * 255).round().byte())


def _pil_to_unit(image: Image.Image, scale: int = 1) -> torch.Tensor:
    """PIL image -> RGB float tensor ``(3, H, W)`` in [0, 1], upscaled ``scale`` times (nearest neighbour)."""
    from torchvision.transforms.functional import pil_to_tensor

    t = pil_to_tensor(image.convert("RGB")).float() / 255
    return t.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2) if scale > 1 else t


# ---------------------------------------------------------------------------------------------------------------------
# grids


def labelled_grid(
    rows: Sequence[Sequence[Image.Image]],
    labels: Sequence[str] | None = None,
    title: str | None = None,
    pad: int = 2,
    min_side: int = 64,
) -> Image.Image:
    """Images in a grid, one row per entry of ``rows``, each row labelled on the left with ``labels[i]``.

    White padding of ``pad`` px around every image; images are upscaled (nearest, by a whole factor) to at least
    ``min_side`` px so small latent models stay readable; a title above is wrapped at its commas to the grid's
    width. Rows may differ in length (the missing cells stay white). Returns a PIL RGB image.
    """
    import torch
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import make_grid

    if not rows or not rows[0]:
        raise ValueError("labelled_grid needs at least one image")
    w, h = rows[0][0].size
    scale = max(1, math.ceil(min_side / max(1, min(w, h))))
    ncols = max(len(r) for r in rows)
    blank = torch.ones(3, h * scale, w * scale)
    cells = [_pil_to_unit(r[j], scale) if j < len(r) else blank for r in rows for j in range(ncols)]
    grid = _unit_to_pil(make_grid(torch.stack(cells), nrow=ncols, padding=pad, pad_value=1.0))

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(measure.textlength(s, font=font)) for s in labels) + 12 if labels else 0
    width = label_w + grid.width
    lines: list[str] = []
    for part in title.split(", ") if title else []:
        if lines and measure.textlength(lines[-1] + ", " + part, font=font) <= width - 12:
            lines[-1] += ", " + part
        else:
            lines.append(part)
    title_h = 14 * len(lines) + 4 if lines else 0
    out = Image.new("RGB", (width, title_h + grid.height), "white")
    out.paste(grid, (label_w, title_h))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((6, 3 + 14 * i), line, fill=(60, 60, 60), font=font)
    ch = h * scale
    for i, label in enumerate(labels or []):
        draw.text((6, title_h + pad + i * (ch + pad) + ch // 2 - 6), label, fill=(0, 0, 0), font=font)
    return out


def recon_grid(originals: torch.Tensor, recons: torch.Tensor, per_row: int = 8, pad: int = 2) -> Image.Image:
    """Originals in the top row(s), their reconstructions in as many rows below, on grey with a gap between.

    ``originals``, ``recons``: ``(B, C, H, W)`` in [-1, 1], C = 1 or 3. Returns a PIL RGB image.
    """
    import torch
    from torchvision.utils import make_grid

    blocks = [
        make_grid((x.detach().float().cpu().clamp(-1, 1) + 1) / 2, nrow=per_row, padding=pad, pad_value=0.5)
        for x in (originals, recons)
    ]
    return _unit_to_pil(torch.cat(blocks, dim=1))


# ---------------------------------------------------------------------------------------------------------------------
# matplotlib figures


def _new_figure(**kw: Any) -> Figure:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(**kw)


def _png(fig: Figure, dpi: float | None = None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **({"dpi": dpi} if dpi else {}))
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: float | None = None) -> Path:
    """Write a matplotlib figure to ``path`` as PNG, atomically (a reader never sees half a file)."""
    atomic_write_bytes(path, _png(fig, dpi))
    return Path(path)


def _show(ax: Any, image: torch.Tensor) -> None:
    """Draw a float image ``(C, H, W)`` in [-1, 1] (C = 1 grey, else the first 3 channels) on ``ax``, no ticks."""
    a = ((image.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    if a.shape[-1] == 1:
        ax.imshow(a[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(a[..., :3])
    ax.set_xticks([])
    ax.set_yticks([])


def snapshot_figure(
    snapshots: Any,
    image_index: int | Sequence[int] = 0,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    cell_inches: float = 1.0,
    dpi: int = 100,
    max_columns: int = 6,
) -> Image.Image:
    """Figure of the denoising snapshots of one or more images: per image, a row of decoded noisy latents and below
    it a row of predicted clean images (x0), one column per snapshot timestep (titled with it), wrapped onto further
    row pairs after ``max_columns`` columns; each image under its own heading (``labels``). Returns PIL RGB.

    Laid out to stay legible when shown small (the app shows it about 370 px wide on a phone): few columns, text
    sized against the cells rather than fixed, short row labels, and the title wrapped to the figure's width.

    ``snapshots``: a :class:`ldm.diffusion.pipeline.Snapshots` (``timesteps``, and ``noisy`` / ``pred_x0`` float
    tensors ``(S, B, C, H, W)`` in [-1, 1]); ``image_index`` indexes its B images.
    """
    import textwrap

    from PIL import Image

    idxs = [image_index] if isinstance(image_index, int) else list(image_index)
    s = len(snapshots.timesteps)
    cols = max(1, min(s, max_columns))
    lines = math.ceil(s / cols)  # row pairs (noisy, x0) per image
    font = 14 * cell_inches  # points: a seventh of a cell, about 11 px on screen at 6 columns in 370 px
    text_h = 1.5 * font / 72  # inches taken by one line of text
    names = [labels[r] if labels is not None and r < len(labels) else None for r in range(len(idxs))]
    width = cols * cell_inches + text_h + 0.15
    block = [lines * (2 * cell_inches + text_h) + (text_h if name else 0.0) for name in names]
    title_lines = []
    if title:
        title_lines = textwrap.wrap(title, width=max(16, int(width * 72 / (0.6 * font))))
    height = sum(block) + len(title_lines) * text_h + 0.1
    fig = _new_figure(figsize=(width, height), dpi=dpi, layout="constrained")
    subfigs = fig.subfigures(len(idxs), 1, squeeze=False, height_ratios=block)[:, 0]
    for subfig, k, name in zip(subfigs, idxs, names):
        axes = subfig.subplots(2 * lines, cols, squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()  # the last row pair may have empty cells
        for j in range(s):
            line, col = divmod(j, cols)
            for row, (tensor, kind) in enumerate(((snapshots.noisy, "noisy"), (snapshots.pred_x0, "pred. x0"))):
                ax = axes[2 * line + row][col]
                ax.set_axis_on()
                _show(ax, tensor[j, k])
                if row == 0:
                    ax.set_title(f"t={snapshots.timesteps[j]}", fontsize=font, pad=2)
                if col == 0:
                    ax.set_ylabel(kind, fontsize=0.85 * font, labelpad=2)
        if name:
            subfig.suptitle(name, fontsize=font, fontweight="bold")
    if title_lines:
        fig.suptitle("\n".join(title_lines), fontsize=font)
    return Image.open(io.BytesIO(_png(fig))).convert("RGB")


def smooth_ema(values: list[float], alpha: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing), same length as ``values``."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc = alpha * acc + (1 - alpha) * v
        out.append(acc / (1 - alpha ** (i + 1)))
    return out


def plot_loss(records: list[dict[str, Any]], path: str | Path, title: str = "training loss") -> None:
    """Draw the loss curve of ``records`` (metrics.jsonl lines) to a PNG at ``path``, atomically.

    Raw per-log losses in a light colour, their smoothed curve on top, learning rate on a second axis; the loss
    axis is logarithmic when the losses span more than a factor of 5 (early diffusion losses fall steeply).
    """
    pts = [
        (r["step"], r["loss"])
        for r in records
        if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"]) and r["loss"] > 0
    ]
    fig = _new_figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    if pts:
        steps, losses = zip(*pts)
        # An EMA over ~1/20 of the points: smooth enough to read the trend, short enough not to lag behind it.
        alpha = 1 - 1 / max(1.0, len(losses) / 20)
        logscale = max(losses) / min(losses) > 5
        if logscale:  # smooth log-losses (a geometric mean), so single spikes do not lift the curve
            smooth = [math.exp(v) for v in smooth_ema([math.log(v) for v in losses], alpha)]
        else:
            smooth = smooth_ema(list(losses), alpha)
        ax.plot(steps, losses, color="#9ecae1", linewidth=1.0, label="loss (per log)")
        ax.plot(steps, smooth, color="#08519c", linewidth=2.0, label="smoothed")
        if logscale:
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.set_title(f"{title} — step {steps[-1]}, smoothed loss {smooth[-1]:.4f}", fontsize=11)
        lrs = [(r["step"], r["lr"]) for r in records if isinstance(r.get("lr"), (int, float))]
        if lrs:
            ax2 = ax.twinx()
            ax2.plot(*zip(*lrs), color="#fd8d3c", linewidth=1.0, alpha=0.7, linestyle="--", label="learning rate")
            ax2.set_ylabel("learning rate", color="#d94801", fontsize=9)
            ax2.tick_params(axis="y", labelcolor="#d94801", labelsize=8)
            ax2.set_ylim(bottom=0)
            ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8, framealpha=0.85)
        else:
            ax.legend(loc="upper right", fontsize=8)
    else:
        ax.set_title(f"{title} — no data yet", fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    fig.tight_layout()
    save_figure(fig, path)


def runs_figure(
    series: Sequence[tuple[str, Sequence[tuple[int, float]], Sequence[tuple[int, float, float]]]],
    path: str | Path,
    smoothing: float = 0.9,
) -> Path:
    """Runs compared: per run ``(name, [(step, loss)], [(step, KID, KID std)])``, the smoothed losses on shared axes
    (left) and KID with its std as error bars over steps where evaluated (right, same colour per run: overlapping
    bars are a difference within the evaluation's noise); written to ``path`` atomically."""
    fig = _new_figure(figsize=(11, 4.2), dpi=110)
    ax_loss, ax_kid = fig.subplots(1, 2)
    for name, loss, kid in series:
        colour = None
        if loss:
            steps, values = zip(*loss)
            (line,) = ax_loss.plot(steps, smooth_ema(list(values), smoothing), label=name, linewidth=1.6)
            colour = line.get_color()
        if kid:
            steps, values, stds = zip(*kid)
            ax_kid.errorbar(steps, values, yerr=stds, marker="o", capsize=4, label=name, color=colour)
    ax_loss.set(title=f"training loss (smoothed, {smoothing:g})", xlabel="step", ylabel="loss")
    ax_kid.set(title="KID ± std over steps (lower is better)", xlabel="step")
    for ax in (ax_loss, ax_kid):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if not ax_kid.lines:
        ax_kid.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=ax_kid.transAxes)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_eval_metrics(records: Sequence[dict[str, Any]], path: str | Path) -> bool:
    """Draw ``eval_kid`` (with its std) and ``eval_class_accuracy`` against ``step`` from metrics.jsonl rows into
    ``path`` (PNG, written atomically). Returns False (and writes nothing) when no row holds an evaluation."""
    import numpy as np

    rows = [r for r in records if isinstance(r.get("eval_kid"), (int, float)) and "step" in r]
    if not rows:
        return False
    steps = [r["step"] for r in rows]
    kid = np.asarray([r["eval_kid"] for r in rows])
    std = np.asarray([r.get("eval_kid_std") or 0.0 for r in rows])
    fig = _new_figure(figsize=(8, 3))
    a1, a2 = fig.subplots(1, 2)
    a1.plot(steps, kid, "o-")
    a1.fill_between(steps, kid - std, kid + std, alpha=0.25)
    a1.set_xlabel("step")
    a1.set_ylabel("KID (lower is better)")
    a2.plot(steps, [r.get("eval_class_accuracy") for r in rows], "o-", color="tab:green")
    a2.set_ylim(0, 1)
    a2.set_xlabel("step")
    a2.set_ylabel("class accuracy")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return True


def memorisation_figure(
    fake: torch.Tensor,
    real: torch.Tensor,
    mem: dict[str, Any],
    path: str | Path,
    num_pairs: int = 8,
    captions: Sequence[str] | None = None,
) -> list[int]:
    """Save the ``num_pairs`` generated images closest to a training image, each above its nearest training image.

    ``fake`` (M, C, H, W) and ``real`` (N, C, H, W) in [-1, 1]; ``mem`` from
    :func:`ldm.evaluation.report.memorisation` (``nn_distance``, ``nn_index``, ``threshold``). Returns the indices
    of the generated images shown (closest first).
    """
    import numpy as np

    dist = np.asarray(mem["nn_distance"])
    order = [int(i) for i in np.argsort(dist)[:num_pairs]]
    k = max(1, len(order))
    fig = _new_figure(figsize=(1.5 * k + 0.4, 3.6))
    axes = fig.subplots(2, k, squeeze=False)
    for j in range(k):
        for r in range(2):
            axes[r, j].axis("off")
        if j >= len(order):
            continue
        i = order[j]
        _show(axes[0, j], fake[i])
        _show(axes[1, j], real[mem["nn_index"][i]])
        for r in range(2):
            axes[r, j].axis("on")
        ratio = dist[i] / mem["threshold"] if mem["threshold"] > 0 else float("inf")
        flag = "  COPY?" if dist[i] < mem["threshold"] else ""
        axes[0, j].set_title((captions[i] + "\n" if captions else "") + f"d/median={ratio:.2f}{flag}", fontsize=7)
    axes[0, 0].set_ylabel("generated", fontsize=8)
    axes[1, 0].set_ylabel("nearest\ntraining", fontsize=8)
    fig.suptitle(
        "Closest generated/training pairs (Inception features); d/median < 1: closer than real images are to each "
        "other",
        fontsize=8,
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return order


def distance_pair(distance: float, threshold: float) -> tuple[str, str]:
    """A distance and the threshold as text, with two decimals, or as many more as it takes to tell them apart."""
    for digits in (2, 3, 4):
        d, t = f"{distance:.{digits}f}", f"{threshold:.{digits}f}"
        if d != t:
            break
    return d, t


def _mark(ax: Any, caption: str, font: float, close: bool) -> None:
    """Caption an image cell; a close one (below the memorisation threshold) in bold red, framed in red."""
    red = "#c0392b"
    ax.set_xlabel(caption, fontsize=font, color=red if close else "black", fontweight="bold" if close else "normal")
    if close:
        for side in ax.spines.values():
            side.set(color=red, linewidth=2.5)


def nearest_figure(
    generated: torch.Tensor,
    training: torch.Tensor,
    indices: Any,
    distances: Any,
    threshold: float,
    training_names: Sequence[str],
    labels: Sequence[str] | None = None,
    cell_inches: float = 1.6,
    dpi: int = 100,
) -> Image.Image:
    """Each generated image beside its closest training images: one row per generated image, its k nearest training
    images to the right, each named and captioned "distance 0.41 (threshold 0.52)"; a distance below the threshold
    (a copy candidate) in red, and the generated image marked. Returns PIL RGB.

    ``generated`` (M, C, H, W) and ``training`` (N, C, H, W) in [-1, 1]; ``indices`` and ``distances`` (M, k) from
    :func:`ldm.evaluation.nearest.nearest_training` (closest first); ``training_names`` (N,) paths of the training
    images; ``labels`` (M,) headings of the generated images.
    """
    import textwrap

    import numpy as np

    idx, dist = np.asarray(indices), np.asarray(distances, dtype=float)
    m, k = idx.shape
    font = 5.5 * cell_inches  # points: about a ninth of a cell, legible when the figure is shown 600 px wide
    fig = _new_figure(figsize=((k + 1) * cell_inches, m * (cell_inches + 0.75) + 0.35), dpi=dpi, layout="constrained")
    axes = fig.subplots(m, k + 1, squeeze=False)
    chars = max(8, int(cell_inches * 72 / (0.6 * font)))  # characters that fit across one cell
    for r in range(m):
        close = dist[r, 0] < threshold
        ax = axes[r, 0]
        _show(ax, generated[r])
        heading = labels[r] if labels is not None and r < len(labels) else f"image {r + 1}"
        ax.set_title("\n".join(textwrap.wrap(heading, chars)[:2]), fontsize=font, fontweight="bold", pad=3)
        _mark(ax, "close to a training\nimage: copy?" if close else "generated", font, close)
        for j in range(k):
            ax = axes[r, j + 1]
            _show(ax, training[int(idx[r, j])])
            name = str(training_names[int(idx[r, j])])
            ax.set_title(name if len(name) <= chars else "…" + name[-(chars - 1) :], fontsize=font, pad=3)
            d, t = distance_pair(dist[r, j], threshold)
            _mark(ax, f"distance {d}\n(threshold {t})", font, dist[r, j] < threshold)
    title = "Closest training images in Inception feature space; red: closer than training images are to each other"
    fig.suptitle("\n".join(textwrap.wrap(title, int((k + 1) * chars))), fontsize=font)
    from PIL import Image

    return Image.open(io.BytesIO(_png(fig))).convert("RGB")
