"""An invisible watermark on every generated image: a fixed marker and the id of the model that made it.

    marked = encode(image, model_id(weights_hash))    # PIL in, PIL out (same size and mode)
    found = decode(marked)                            # Detection(marked=True, model_id="3f9a", ...)

The embedding is a DWT-DCT method of invisible-watermark, the library diffusers' Stable Diffusion XL pipelines use
(``imwatermark``): the Haar LL band of the image is cut into 4x4 blocks and each block carries one bit by quantising
one value of its DCT to an odd or even half-step of ``scale`` (quantisation index modulation); the payload repeats
over the blocks and each bit is read back by a vote of its blocks.

Choices (why each, measured on generated 64x64 faces by ``scripts/bench_watermark.py``, whose design sweep compares
the alternatives; the numbers are in its record in docs/benchmarks/):

- Method ``dwtDctSvd`` (``EmbedDwtDctSvd``: the largest singular value of a block's DCT, about the block's mean), not
  SDXL's ``dwtDct`` (``EmbedMaxDct``: the block's largest single coefficient). SDXL marks 1024x1024 images, where each
  bit gets thousands of votes; a 64x64 image has 64 blocks in all. ``dwtDct`` moves one coefficient, a 2x2 pixel
  point that a JPEG re-save quantises away (after JPEG 90 its votes read at chance in chroma), and misreads some
  votes even unattacked (the change can make another coefficient the largest). A block mean is a low frequency that
  JPEG keeps.
- Luminance (Y; the grey values of a grey image), not SDXL's chroma (U): JPEG subsamples chroma 2x2 and quantises it
  more coarsely, and the mark in U lost many votes to JPEG 90 at the same PSNR. One carrier also serves grey
  (1-channel) models, whose images have no chroma, and survives a colour image turned grey.
- :data:`SCALE` 36, the library's default step: pixels move by a few grey levels. A step of 24 already lost ids to
  JPEG 90; 36 lost none.
- 32 payload bits (:data:`MARKER` 16 + model id 16): a 64x64 image still gives each bit 2 votes. The library's
  wrapper ``WatermarkEncoder.encode`` refuses images under 256x256 (and puts the detail bands back swapped); we call
  the method's ``encode_frame`` on our own DWT, and read its votes with their margins (:func:`_phases`).
- Detection trusts no single bit: an image is marked when at least :data:`MIN_MARKER_AGREEMENT` of the block votes
  at the marker's positions agree with the marker. Unmarked pixels vote about half each way (a flat image votes one
  value everywhere, and the marker is half ones), so on the 32 marker votes of a 64x64 image chance gets there with
  probability ~1e-5, and far less on larger images.
- The model id is the first :data:`ID_HEX` hex digits of the model's weights hash (``model_identity`` of our
  pipelines, the folder hash of text-to-image ones, without any LoRA): enough to tell the models of one workspace
  apart; ``ldm verify`` finds the model by it.

Images with fewer 8x8 blocks than payload bits (under 64x32 pixels, e.g. the 16x16 of test models) are returned
unmarked (:func:`can_carry`); :func:`decode` says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

LIBRARY = "invisible-watermark"
METHOD = "dwtDctSvd"  # the library's name of the embedding
MARKER = (1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0)  # fixed, half ones, no long runs (0xB274)
ID_HEX = 4  # hex digits of the weights hash carried (16 bits)
PAYLOAD_BITS = len(MARKER) + 4 * ID_HEX
BLOCK = 4  # LL-band block side (the library's default): 8x8 pixels per vote
SCALE = 36.0  # quantisation step of the block's largest singular value (the library's default)
MIN_MARKER_AGREEMENT = 0.85  # share of the marker's block votes that must agree for "marked"


def model_id(weights_hash: str) -> str:
    """The id the mark carries for a model: the first :data:`ID_HEX` hex digits of its weights hash."""
    h = str(weights_hash).strip().lower()
    if len(h) < ID_HEX or any(c not in "0123456789abcdef" for c in h[:ID_HEX]):
        raise ValueError(f"a weights hash is a hex string of at least {ID_HEX} digits, got {weights_hash!r}")
    return h[:ID_HEX]


def payload(weights_hash: str) -> list[int]:
    """The bits embedded for a model: :data:`MARKER`, then its id (:func:`model_id`), most significant bit first."""
    value = int(model_id(weights_hash), 16)
    return list(MARKER) + [(value >> (4 * ID_HEX - 1 - k)) & 1 for k in range(4 * ID_HEX)]


def capacity(width: int, height: int) -> int:
    """Votes (4x4 blocks of the LL band, 8x8 pixels each) an image of this size has."""
    return (height // 4 * 4 // 2 // BLOCK) * (width // 4 * 4 // 2 // BLOCK)


def can_carry(image: Image.Image) -> bool:
    """Whether ``image`` is large enough for one vote per payload bit (64x32 pixels or more)."""
    return capacity(*image.size) >= PAYLOAD_BITS


def _method(bits: list[int], scale: float) -> Any:
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd

    return EmbedDwtDctSvd(watermarks=bits, wmLen=PAYLOAD_BITS, scales=[scale, 0, 0], block=BLOCK)


def _luma(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(Y (H, W), YUV (H, W, 3) or None for grey images), float32 in 0..255 (float: the library's uint8 path would
    truncate the inverse DWT's values, so we pass floats as diffusers' watermarker does)."""
    import cv2
    import numpy as np

    if image.mode in ("L", "LA", "I", "I;16", "F", "1"):
        return np.asarray(image.convert("L"), dtype=np.float32).copy(), None
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1])
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    return yuv[:, :, 0].copy(), yuv


def encode(image: Image.Image, weights_hash: str, *, scale: float = SCALE) -> Image.Image:
    """``image`` carrying the mark of the model with ``weights_hash`` (or its id, :func:`model_id`).

    Returns a new image of the same size and mode (L, LA, RGB or RGBA; other modes come back as RGB), or ``image``
    itself when it is too small (:func:`can_carry`). Only luminance changes: each 8x8 pixel block by a fraction of
    ``scale`` / 8 grey levels. ``scale`` other than :data:`SCALE` is for experiments (give :func:`decode` the same).
    """
    import cv2
    import numpy as np
    import pywt
    from PIL import Image

    bits = payload(weights_hash)
    if not can_carry(image):
        return image
    y, yuv = _luma(image)
    h, w = y.shape[0] // 4 * 4, y.shape[1] // 4 * 4
    ll, details = pywt.dwt2(y[:h, :w], "haar")
    _method(bits, scale).encode_frame(ll, scale)  # in place
    y[:h, :w] = pywt.idwt2((ll, details), "haar")
    if yuv is None:
        out = Image.fromarray(np.clip(np.rint(y), 0, 255).astype(np.uint8), mode="L")
        return Image.merge("LA", (out, image.getchannel("A"))) if image.mode == "LA" else out
    yuv[:, :, 0] = y
    rgb = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)[:, :, ::-1]
    out = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), mode="RGB")
    if image.mode == "RGBA":
        out.putalpha(image.getchannel("A"))
    return out


@dataclass
class Detection:
    """What :func:`decode` read from an image.

    ``marked``: whether it carries the mark; ``model_id``: the id it carries (None when unmarked); ``agreement``: share
    of the marker's block votes that agree with the marker (about 1 when marked, about 0.5 when not);
    ``id_agreement``: share of the id's block votes that agree with the id read (below 1: some votes were lost, the
    id may be wrong); ``votes``: blocks per payload bit; ``reason``: why nothing could be read.
    """

    marked: bool
    model_id: str | None = None
    agreement: float = 0.0
    id_agreement: float = 0.0
    votes: int = 0
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _phases(ll: np.ndarray, scale: float) -> np.ndarray:
    """Where each block's value sits between two quantisation steps, ``(s[0] mod scale) / scale`` in [0, 1) (0.25 for
    a written 0, 0.75 for a 1), as ``(bits, votes per bit)`` in the library's block order (row-major, block k
    carrying bit k mod :data:`PAYLOAD_BITS`). The library's ``infer_dct_svd`` reads the same value but keeps only
    whether it is above 0.5; the phase also says how sure each vote is."""
    import cv2
    import numpy as np

    b = BLOCK
    rows, cols = ll.shape[0] // b, ll.shape[1] // b
    phases = []
    for i in range(rows):
        for j in range(cols):
            s0 = np.linalg.svd(cv2.dct(np.ascontiguousarray(ll[i * b : (i + 1) * b, j * b : (j + 1) * b])))[1][0]
            phases.append((s0 % scale) / scale)
    n = len(phases) // PAYLOAD_BITS
    return np.array(phases[: n * PAYLOAD_BITS]).reshape(n, PAYLOAD_BITS).T


def decode(image: Image.Image, *, scale: float = SCALE) -> Detection:
    """Whether ``image`` (any PIL image) carries the mark, and which model id. Reads the pixels only, no metadata:
    works after the PNG text chunks are stripped and after a JPEG re-save."""
    import numpy as np
    import pywt

    if not can_carry(image):
        w, h = image.size
        return Detection(marked=False, reason=f"{w}x{h} is too small to carry the mark (fewer than "
                                              f"{PAYLOAD_BITS} 8x8 blocks)")  # fmt: skip
    y, _ = _luma(image)
    h, w = y.shape[0] // 4 * 4, y.shape[1] // 4 * 4
    ll, _ = pywt.dwt2(y[:h, :w], "haar")
    phases = _phases(ll, scale)
    votes = (phases > 0.5).astype(int)  # the library's hard votes
    agreement = float((votes[: len(MARKER)] == np.array(MARKER)[:, None]).mean())
    # Soft votes for the id: +1 on the 1 step (0.75), -1 on the 0 step (0.25), ~0 near a boundary. With 2 votes per
    # bit (64x64) one vote lost to JPEG ties the hard count; the vote still near its step decides.
    soft = np.cos(2 * np.pi * (phases[len(MARKER) :] - 0.75)).sum(1)
    id_bits = (soft > 0).astype(int)
    marked = agreement >= MIN_MARKER_AGREEMENT
    return Detection(
        marked=marked,
        model_id=f"{int(''.join(map(str, id_bits)), 2):0{ID_HEX}x}" if marked else None,
        agreement=agreement,
        id_agreement=float((votes[len(MARKER) :] == id_bits[:, None]).mean()),
        votes=int(phases.shape[1]),
    )


def record(image: Image.Image, weights_hash: str) -> dict[str, Any] | None:
    """What a provenance record says about the mark :func:`encode` put on ``image`` (None: too small, unmarked)."""
    if not can_carry(image):
        return None
    return {"library": LIBRARY, "method": METHOD, "model_id": model_id(weights_hash), "payload_bits": PAYLOAD_BITS}
