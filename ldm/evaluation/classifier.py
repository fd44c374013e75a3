"""A small CNN class classifier trained on the real images, to check that generated images show the requested class.

    clf = load_or_train_classifier("data/att-faces", image_size=64, channels=1)
    print(clf.holdout_accuracy)           # its own accuracy on held-out real images
    labels = clf.predict(images)          # images (B, C, H, W) in [-1, 1] -> LongTensor (B,)

The classifier is trained once per dataset and cached under ``<cache>/classifiers/<fingerprint>/`` (the fingerprint
covers every image file's bytes, the class names, the image size, channels and the training recipe), so a second
``ldm eval`` on the same data reuses it. It is trained on a per-class split of the real images and the held-out part
gives its accuracy: class accuracy of generated images only means something next to that number.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm.errors import UserError

if TYPE_CHECKING:
    import torch

    from ldm.data.folders import FolderScan

FORMAT_VERSION = 1
CLASSIFIER_SIZE = 32  # images are resized to at most this side before the CNN: cheap, and enough for identity
HOLDOUT_FRACTION = 0.2  # share of real images per class held out to measure the classifier itself
TRAIN_STEPS = 400  # optimiser steps (batch 32): ~80 epochs of a 160-image training split
WIDTHS = (16, 32, 64)


def default_cache_dir(workspace: str | Path | None = None) -> Path:
    """``$LDM_CACHE_DIR`` or ``<workspace>/.ldm-cache`` (default workspace: the folder the command runs in)."""
    return Path(os.environ.get("LDM_CACHE_DIR") or Path(workspace or Path.cwd()) / ".ldm-cache")


def build_model(num_classes: int, channels: int, widths: tuple[int, ...] = WIDTHS) -> torch.nn.Module:
    """Conv3x3-GroupNorm-SiLU blocks with 2x max-pooling, global average pooling, dropout and a linear head.

    Input (B, channels, S, S) in [-1, 1], output logits (B, num_classes).
    """
    from torch import nn

    layers: list[nn.Module] = []
    c = channels
    for w in widths:
        layers += [
            nn.Conv2d(c, w, 3, padding=1),
            nn.GroupNorm(8, w),
            nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.GroupNorm(8, w),
            nn.SiLU(),
            nn.MaxPool2d(2),
        ]
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    import torch.nn.functional as F

    if images.shape[-1] == size and images.shape[-2] == size:
        return images.float()
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1/8 of the side (reflect padding) and brightness/contrast jitter: the classifier must
    recognise a class, not the exact pixels of the few training images."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    p = max(1, h // 8)
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    contrast = 1 + (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.4
    bright = (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.2
    return (out * contrast + bright).clamp(-1, 1)


def evaluate_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, size: int) -> float:
    """Share of ``images`` (N, C, H, W) in [-1, 1] that ``model`` labels correctly (``labels`` (N,))."""
    import torch

    if len(images) == 0:
        return float("nan")
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(_resize(images[i : i + 64], size)).argmax(1) for i in range(0, len(images), 64)])
    return float((pred.cpu() == labels.cpu()).float().mean())


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    holdout: list[int] | None = None,
    steps: int = TRAIN_STEPS,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    size: int = CLASSIFIER_SIZE,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train :func:`build_model` on ``images`` (N, C, H, W) in [-1, 1] with ``labels`` (N,) int64.

    Indices in ``holdout`` are kept out of training and measured at the end. AdamW with a cosine learning rate,
    label smoothing 0.1, shift and brightness augmentation. Returns ``(model (eval, on CPU), stats)`` with
    ``train_accuracy``, ``holdout_accuracy`` (NaN without a holdout), ``num_train``, ``num_holdout``, ``seconds``.
    """
    import torch
    import torch.nn.functional as F

    t0 = time.time()
    hold = sorted(set(holdout or []))
    train = [i for i in range(len(images)) if i not in set(hold)]
    if not train:
        raise UserError("the classifier needs at least one training image")
    size = min(size, images.shape[-1])
    x_train = _resize(images[train], size).to(device)
    y_train = labels[train].to(device)
    torch.manual_seed(seed)
    model = build_model(num_classes, images.shape[1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    # A 32x32 CNN at batch 32 is too small to gain from intra-op threads; on a busy CPU their synchronisation makes
    # it several times slower than one thread (docs/benchmarks.md). Restored afterwards.
    threads = torch.get_num_threads()
    if str(device) == "cpu":
        torch.set_num_threads(1)
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(train), (min(batch_size, len(train)),), generator=gen)
            xb = _augment(x_train[idx.to(x_train.device)].cpu(), gen).to(device)
            loss = F.cross_entropy(model(xb), y_train[idx.to(y_train.device)], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    model = model.cpu().eval()
    stats = {
        "train_accuracy": evaluate_accuracy(model, images[train], labels[train], size),
        "holdout_accuracy": evaluate_accuracy(model, images[hold], labels[hold], size) if hold else float("nan"),
        "num_train": len(train),
        "num_holdout": len(hold),
        "steps": steps,
        "input_size": size,
        "seconds": round(time.time() - t0, 1),
    }
    return model, stats


@dataclass
class TrainedClassifier:
    """A trained classifier with what it was trained on; :meth:`predict` labels images."""

    model: torch.nn.Module
    classes: list[str]
    image_size: int  # size the real images were loaded at (before the classifier's own resize)
    channels: int
    input_size: int  # side the CNN sees
    holdout_accuracy: float
    train_accuracy: float
    num_train: int
    num_holdout: int
    fingerprint: str = ""
    path: Path | None = None  # cache folder, when cached
    info: dict[str, Any] = field(default_factory=dict)

    def predict(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Class ids ``(B,)`` int64 of ``images`` ``(B, C, H, W)`` in [-1, 1] (any H = W; grey/RGB converted)."""
        import torch

        if images.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
        x = match_channels(images, self.channels)
        self.model.eval()
        with torch.no_grad():
            out = [
                self.model(_resize(x[i : i + batch_size], self.input_size)).argmax(1)
                for i in range(0, len(x), batch_size)
            ]
        return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.long)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no weights)."""
        return {
            "classes": len(self.classes),
            "holdout_accuracy": self.holdout_accuracy,
            "train_accuracy": self.train_accuracy,
            "num_train": self.num_train,
            "num_holdout": self.num_holdout,
            "input_size": self.input_size,
            "image_size": self.image_size,
            "channels": self.channels,
            "fingerprint": self.fingerprint,
            "cache": str(self.path) if self.path else None,
            "chance": 1.0 / max(1, len(self.classes)),
        }


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert ``images`` (B, C, H, W) in [-1, 1] to ``channels`` (1: ITU-R 601 luma, as PIL's "L"; 3: repeat)."""
    c = images.shape[1]
    if c == channels:
        return images
    if channels == 1 and c == 3:
        w = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images * w).sum(1, keepdim=True)
    if channels == 3 and c == 1:
        return images.repeat(1, 3, 1, 1)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def load_images(scan: FolderScan, image_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All readable images of a scan: ``(N, channels, S, S)`` float in [-1, 1] and labels ``(N,)`` int64."""
    import torch

    from ldm.data.folders import load_image

    if not scan.samples:
        raise UserError(f"no readable images in {scan.root}")
    images = torch.stack([load_image(p, image_size, channels) for p, _ in scan.samples])
    labels = torch.tensor([label for _, label in scan.samples], dtype=torch.long)
    return images, labels


def dataset_fingerprint(scan: FolderScan, image_size: int, channels: int, recipe: dict[str, Any]) -> str:
    """sha256 over the class names, every image's relative path and bytes, the preprocessing and the recipe."""
    from ldm.utils import sha256_file

    h = hashlib.sha256()
    h.update(json.dumps({"v": FORMAT_VERSION, "classes": scan.classes, "size": image_size, "ch": channels}).encode())
    h.update(json.dumps(recipe, sort_keys=True).encode())
    for path, label in sorted(scan.samples, key=lambda s: str(s[0])):
        rel = os.path.relpath(path, scan.root)
        h.update(f"{label}:{rel}:{sha256_file(path)}\n".encode())
    return h.hexdigest()


def load_or_train_classifier(
    data: str | Path | FolderScan,
    *,
    image_size: int,
    channels: int,
    cache_dir: str | Path | None = None,
    steps: int = TRAIN_STEPS,
    holdout_fraction: float = HOLDOUT_FRACTION,
    seed: int = 0,
    device: str = "cpu",
    log: Any = None,
) -> TrainedClassifier:
    """The classifier of a class-folder dataset, from ``<cache_dir>/classifiers/<fingerprint>/`` or trained now.

    ``data`` is a dataset folder or a :class:`~ldm.data.folders.FolderScan`; images are loaded at ``image_size`` with
    ``channels`` (the run's settings). ``cache_dir`` defaults to :func:`default_cache_dir`. ``log`` is an optional
    ``print``-like callable for progress messages.
    """
    from safetensors.torch import load_file, save_file

    from ldm.data.folders import holdout_split, scan_image_folder
    from ldm.utils import atomic_dir, atomic_write_json

    log = log or (lambda msg: None)
    scan = data if not isinstance(data, (str, Path)) else scan_image_folder(data)
    if len(scan.classes) < 2:
        raise UserError(f"class accuracy needs at least 2 classes; {scan.root} has {len(scan.classes)}")
    recipe = {
        "steps": steps,
        "holdout": holdout_fraction,
        "seed": seed,
        "widths": list(WIDTHS),
        "size": CLASSIFIER_SIZE,
    }
    fp = dataset_fingerprint(scan, image_size, channels, recipe)
    folder = Path(cache_dir or default_cache_dir()) / "classifiers" / fp[:16]
    info_path, weights_path = folder / "classifier.json", folder / "model.safetensors"
    if info_path.is_file() and weights_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("fingerprint") == fp:
            model = build_model(len(scan.classes), channels)
            model.load_state_dict(load_file(str(weights_path)))
            log(f"classifier: cached {folder} (held-out accuracy {info['holdout_accuracy']:.3f})")
            return _from_info(model.eval(), info, folder)
    images, labels = load_images(scan, image_size, channels)
    _, hold = holdout_split(scan.samples, holdout_fraction, seed)
    log(f"classifier: training on {len(images) - len(hold)} real images, {len(hold)} held out ({steps} steps)")
    model, stats = train_classifier(
        images, labels, len(scan.classes), holdout=hold, steps=steps, seed=seed, device=device
    )
    info = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fp,
        "data_dir": str(scan.root),
        "classes": list(scan.classes),
        "image_size": image_size,
        "channels": channels,
        "recipe": recipe,
        **stats,
    }
    with atomic_dir(folder) as tmp:  # a killed run never leaves a half-written cache entry
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / "classifier.json", info)
    log(
        f"classifier: held-out accuracy {stats['holdout_accuracy']:.3f} (chance {1 / len(scan.classes):.3f}), "
        f"cached in {folder}"
    )
    return _from_info(model, info, folder)


def _from_info(model: torch.nn.Module, info: dict[str, Any], folder: Path | None) -> TrainedClassifier:
    return TrainedClassifier(
        model=model,
        classes=list(info["classes"]),
        image_size=int(info["image_size"]),
        channels=int(info["channels"]),
        input_size=int(info["input_size"]),
        holdout_accuracy=float(info["holdout_accuracy"]),
        train_accuracy=float(info["train_accuracy"]),
        num_train=int(info["num_train"]),
        num_holdout=int(info["num_holdout"]),
        fingerprint=str(info["fingerprint"]),
        path=folder,
        info=info,
    )
