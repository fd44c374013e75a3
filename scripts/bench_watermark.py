"""Invisible watermark (:mod:`ldm.watermark`): is it found again, is it absent from real photos, does it cost quality?

    python scripts/bench_watermark.py --pipeline runs/faces --photos ../shared/datasets/att-faces-20
    python scripts/bench_watermark.py --pipeline /work/exp/ws/runs/demo     # KID against the run's own data folder

``--num-images`` images of the model (image i: class ``i % K``, seed ``seed + i``, the run's sampler settings) are
generated once, unmarked, and marked with :func:`ldm.watermark.encode` (what ``ldm sample`` and the app write). Each
marked image is read back by :func:`ldm.watermark.decode` after its PNG text chunks are stripped (the pixels
re-encoded as a bare PNG) and after a JPEG re-save at quality 90 (and 75, to see where it starts to fail): detection
rate and right model id. Grey images (1-channel models) carry the mark in their grey values: real grey photos,
marked, stand in for them. False positives: the unmarked generated images, ``--num-photos`` real photos
(``--photos``, round-robin over its people, resized to the model's size and channels as training loads them) and as
many images of the run's own dataset (``--real``, default the run's recorded data folder), each also as JPEG 90.
Cost: PSNR of marked against unmarked, encode and decode time per image and, with ``--real``, KID (Inception
features, :mod:`ldm.evaluation.report`) and class accuracy (the classifier ``ldm eval`` uses, cached per dataset)
of the same images with and without the mark, beside a second unmarked set with other seeds: the seed-to-seed
noise a change must exceed to matter.

The design sweep compares, on the same generated images and payload, the library's two DWT-DCT methods (``dwtDct``,
the one SDXL uses, and ``dwtDctSvd``) in U (SDXL's channel) and Y at the quantisation steps ``--scales``: PSNR and
the share of block votes read right, straight away and after JPEG 90 (for ``dwtDctSvd`` in Y, the right ids
:func:`ldm.watermark.decode` reads after JPEG 90 and 75 at each step). The numbers go to ``--json`` if given and,
with the command line, CPU, versions and commit, into a record in ``docs/benchmarks/`` (``scripts/bench_record.py``).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "scripts"))  # bench_record


def strip_chunks(image: Any) -> Any:
    """The pixels alone, through a bare PNG (no text chunks)."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf).copy()


def jpeg(image: Any, quality: int = 90) -> Any:
    """A JPEG re-save at ``quality`` (Pillow's defaults otherwise: 4:2:0 chroma subsampling)."""
    from PIL import Image

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).copy()


def psnr(a: Any, b: Any) -> float:
    """PSNR in dB of two PIL images (ldm.evaluation.metrics.psnr, the one place it is computed)."""
    from ldm.evaluation.metrics import psnr as psnr_of

    return float(psnr_of(to_tensor([a]), to_tensor([b]))[0])


def to_tensor(images: list[Any]) -> Any:
    """PIL images -> float (N, C, H, W) in [-1, 1]."""
    import numpy as np
    import torch

    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    if arr.ndim == 3:
        arr = arr[..., None]
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1


def generate(pipe: Any, class_ids: list[int], seed: int, sampling: Any, batch_size: int = 16) -> list[Any]:
    """Unmarked PIL images, image i of class ``class_ids[i]`` with seed ``seed + i`` (the pipeline's own output)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(class_ids), batch_size):
            ids = class_ids[i : i + batch_size]
            res = pipe(ids, num_inference_steps=sampling.num_inference_steps, guidance_scale=sampling.guidance_scale,
                       seeds=list(range(seed + i, seed + i + len(ids))), scheduler=sampling.scheduler)  # fmt: skip
            out.extend(res.images)
    return out


def read_back(images: list[Any], model_id: str | None) -> dict[str, Any]:
    """Detections of ``images``: how many read as marked, with the right id, and the agreement spread."""
    from ldm.watermark import decode

    found = [decode(im) for im in images]
    agreement = [d.agreement for d in found]
    row = {
        "images": len(found),
        "marked": sum(d.marked for d in found),
        "agreement_min": min(agreement),
        "agreement_median": statistics.median(agreement),
        "agreement_max": max(agreement),
    }
    if model_id is not None:
        row["right_id"] = sum(d.marked and d.model_id == model_id for d in found)
        row["id_agreement_min"] = min(d.id_agreement for d in found)
    return row


def photos(folder: Path, n: int, size: int, channels: int) -> list[Any]:
    """``n`` real images, round-robin over the class folders, loaded as training loads them (size, channels)."""
    from ldm.data.folders import load_image, scan_image_folder
    from ldm.figures import to_pil

    scan = scan_image_folder(folder)
    by_class: dict[int, list[Path]] = {}
    for path, label in scan.samples:
        by_class.setdefault(label, []).append(path)
    order = [v[k] for k in range(max(len(v) for v in by_class.values())) for v in by_class.values() if k < len(v)]
    import torch

    return to_pil(torch.stack([load_image(p, size, channels) for p in order[:n]]))


def quality(args: argparse.Namespace, pipe: Any, sets: dict[str, list[Any]], class_ids: list[int]) -> dict[str, Any]:
    """KID and class accuracy of each image set against the real data (the extractor and classifier of ldm eval)."""
    import numpy as np

    from ldm.data.folders import scan_image_folder
    from ldm.evaluation.classifier import load_or_train_classifier
    from ldm.evaluation.inception import load_inception
    from ldm.evaluation.report import class_accuracy, frechet_distance, kernel_inception_distance, load_real_set

    scan = scan_image_folder(args.real)
    size, channels = sets["unmarked"][0].size[0], len(sets["unmarked"][0].getbands())
    extractor = load_inception(device="cpu")
    real = load_real_set(scan, size, channels, extractor, log=print)
    clf = load_or_train_classifier(scan, image_size=size, channels=channels, log=print)
    to_data = [scan.classes.index(c) for c in pipe.class_names]
    labels = np.asarray([to_data[c] for c in class_ids])
    out: dict[str, Any] = {"real": str(args.real), "num_real": len(real.images), "classifier": clf.summary()}
    predicted = {}
    for name, images in sets.items():
        x = to_tensor(images)
        feats = extractor(x)
        kid, kid_std = kernel_inception_distance(real.features, feats, 100, 1000, 0)
        predicted[name] = clf.predict(x).numpy()
        acc = class_accuracy(predicted[name], labels, scan.classes)["overall"]
        out[name] = {
            "kid": kid,
            "kid_std": kid_std,
            "fid": frechet_distance(real.features, feats),
            "class_accuracy": acc,
        }
        print(f"  {name:18s} KID {kid:.4f} ± {kid_std:.4f}, class accuracy {acc:.3f}", flush=True)
    out["predictions_changed_by_mark"] = int((predicted["unmarked"] != predicted["marked"]).sum())
    out["kid_change_by_mark"] = out["marked"]["kid"] - out["unmarked"]["kid"]
    out["kid_change_other_seeds"] = out["unmarked_other_seeds"]["kid"] - out["unmarked"]["kid"]
    return out


def mark_variant(image: Any, bits: list[int], method: str, channel: str, scale: float) -> Any:
    """``image`` marked with one of the library's two DWT-DCT methods in one YUV channel (the design sweep's
    variants; :func:`ldm.watermark.encode` is ``dwtDctSvd`` in Y)."""
    import cv2
    import numpy as np
    import pywt
    from PIL import Image

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    yuv = cv2.cvtColor(np.ascontiguousarray(rgb[:, :, ::-1]), cv2.COLOR_BGR2YUV)
    k = "YU".index(channel)
    ll, details = pywt.dwt2(yuv[:, :, k], "haar")
    _variant(method, bits, scale).encode_frame(ll, scale)
    yuv[:, :, k] = pywt.idwt2((ll, details), "haar")
    out = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)[:, :, ::-1]
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _variant(method: str, bits: list[int], scale: float) -> Any:
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd
    from imwatermark.maxDct import EmbedMaxDct

    cls = {"dwtDct": EmbedMaxDct, "dwtDctSvd": EmbedDwtDctSvd}[method]
    return cls(bits, wmLen=len(bits), scales=[scale, scale, 0], block=4)


def votes_right(image: Any, bits: list[int], method: str, channel: str, scale: float) -> tuple[float, bool]:
    """(share of block votes that read their bit right, whether every bit's majority is right; a tie is wrong)."""
    import cv2
    import numpy as np
    import pywt

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    yuv = cv2.cvtColor(np.ascontiguousarray(rgb[:, :, ::-1]), cv2.COLOR_BGR2YUV)
    ll, _ = pywt.dwt2(yuv[:, :, "YU".index(channel)], "haar")
    votes = _variant(method, bits, scale).decode_frame(ll, scale, [[] for _ in bits])
    n = min(len(v) for v in votes)
    right = np.array([row[:n] for row in votes]) == np.array(bits)[:, None]
    return float(right.mean()), bool((2 * right.sum(1) > n).all())


def design(images: list[Any], model_id: str, scales: list[float]) -> list[dict[str, Any]]:
    """Per method (``dwtDct``: SDXL's; ``dwtDctSvd``), channel (U: SDXL's; Y) and step: PSNR, and the votes read
    right straight away and after JPEG 90, on the same images with the same payload."""
    from ldm.watermark import METHOD, decode, payload

    bits = payload(model_id)
    rows = []
    for method in ("dwtDct", "dwtDctSvd"):
        for channel in ("U", "Y"):
            for scale in scales:
                marked = [mark_variant(im, bits, method, channel, scale) for im in images]
                row: dict[str, Any] = {"method": method, "channel": channel, "scale": scale}
                row["psnr_mean"] = statistics.mean(psnr(a, b) for a, b in zip(marked, images))
                for attack, attacked in (("direct", marked), ("jpeg90", [jpeg(im) for im in marked])):
                    read = [votes_right(im, bits, method, channel, scale) for im in attacked]
                    row[f"{attack}_votes_right"] = statistics.mean(r[0] for r in read)
                    row[f"{attack}_all_bits_right"] = sum(r[1] for r in read)
                if (method, channel) == (METHOD, "Y"):  # ldm.watermark's own: its decoder (soft votes for the id)
                    for q in (90, 75):
                        found = [decode(jpeg(im, q), scale=scale) for im in marked]
                        row[f"jpeg{q}_right_id"] = sum(d.marked and d.model_id == model_id for d in found)
                rows.append(row)
                print(f"  {method:9s} {channel} scale {scale:4g}: PSNR {row['psnr_mean']:5.1f} dB; votes right "
                      f"{row['direct_votes_right']:.3f}, after JPEG 90 {row['jpeg90_votes_right']:.3f}; all 32 bits "
                      f"right {row['direct_all_bits_right']}/{len(images)}, after JPEG 90 "
                      f"{row['jpeg90_all_bits_right']}/{len(images)}"
                      + (f"; ldm.watermark.decode right id after JPEG 90 {row['jpeg90_right_id']}, 75 "
                         f"{row['jpeg75_right_id']}" if "jpeg90_right_id" in row else ""), flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", required=True, help="trained run or pipeline folder")
    p.add_argument(
        "--photos",
        default=str(ROOT.parent / "shared/datasets/att-faces-20"),
        help="class folders of real photos for the false positives (default: ../shared/datasets/...)",
    )
    p.add_argument("--real", default=None, help="the run's dataset, for KID and class accuracy (default: the run's)")
    p.add_argument("--num-images", type=int, default=100, help="generated images (default 100)")
    p.add_argument("--num-photos", type=int, default=100, help="real photos (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of image 0 (default 0)")
    p.add_argument("--scales", type=float, nargs="*", default=[18, 24, 36, 48], help="design sweep steps")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument("--record-dir", default=str(ROOT / "docs" / "benchmarks"),
                   help="where the run's record goes (scripts/bench_record.py; default docs/benchmarks/)")  # fmt: skip
    args = p.parse_args(argv)
    if not Path(args.photos).is_dir():
        p.error(f"--photos {args.photos}: not a folder")

    import torch
    from bench_record import describe_machine, write_record

    from ldm.config import SamplingConfig
    from ldm.diffusion.pipeline import load_pipeline
    from ldm.diffusion.sample_files import model_identity
    from ldm.run_folder import RunFolder
    from ldm.watermark import METHOD, PAYLOAD_BITS, SCALE, decode, encode, model_id

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {describe_machine()['model']}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    run = Path(args.pipeline)
    folder = RunFolder.find_pipeline(run)
    sampling = SamplingConfig()
    if RunFolder(run).config_path.is_file():
        sampling = RunFolder(run).read_config().sampling
        inputs = RunFolder(run).path / "inputs.json"
        if args.real is None and inputs.is_file():
            args.real = (json.loads(inputs.read_text()).get("latents") or {}).get("data_dir")
    pipe = load_pipeline(folder, device="cpu")
    ident = model_identity(pipe, folder)
    mid = model_id(ident["weights_hash"])
    k = len(pipe.class_names)
    class_ids = [i % k for i in range(args.num_images)]
    print(f"model {folder}: {k} classes, weights hash {ident['weights_hash'][:12]}, watermark id {mid}")

    t0 = time.perf_counter()
    unmarked = generate(pipe, class_ids, args.seed, sampling)
    gen_s = time.perf_counter() - t0
    size, mode = unmarked[0].size, unmarked[0].mode
    print(f"generated {len(unmarked)} {size[0]}x{size[1]} {mode} images in {gen_s:.0f} s "
          f"({sampling.scheduler} {sampling.num_inference_steps}, guidance {sampling.guidance_scale:g})")  # fmt: skip
    t0 = time.perf_counter()
    marked = [encode(im, mid) for im in unmarked]
    encode_ms = (time.perf_counter() - t0) / len(marked) * 1000
    t0 = time.perf_counter()
    for im in marked:
        decode(im)
    decode_ms = (time.perf_counter() - t0) / len(marked) * 1000
    psnrs = [psnr(a, b) for a, b in zip(marked, unmarked)]
    import numpy as np

    max_diff = max(
        int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(marked, unmarked)
    )

    channels = 1 if mode == "L" else 3
    real_photos = photos(Path(args.photos), args.num_photos, size[0], channels)
    grey_photos = photos(Path(args.photos), args.num_photos, size[0], 1)
    false_sets = {
        "generated_unmarked": unmarked,
        "generated_unmarked_jpeg90": [jpeg(im) for im in unmarked],
        "photos": real_photos,
        "photos_jpeg90": [jpeg(im) for im in real_photos],
    }
    if args.real:
        false_sets["run_data"] = photos(Path(args.real), args.num_photos, size[0], channels)
        false_sets["run_data_jpeg90"] = [jpeg(im) for im in false_sets["run_data"]]
    results: dict[str, Any] = {
        "model": str(folder),
        "weights_hash": ident["weights_hash"],
        "watermark_id": mid,
        "image": f"{size[0]}x{size[1]} {mode}",
        "payload_bits": PAYLOAD_BITS,
        "method": METHOD,
        "scale": SCALE,
        "sampling": {
            "scheduler": sampling.scheduler,
            "num_inference_steps": sampling.num_inference_steps,
            "guidance_scale": sampling.guidance_scale,
            "seed": args.seed,
        },  # fmt: skip
        "num_images": len(marked),
        "encode_ms_per_image": encode_ms,
        "decode_ms_per_image": decode_ms,
        "psnr_mean": statistics.mean(psnrs),
        "psnr_min": min(psnrs),
        "max_pixel_change": max_diff,
        "detection": {
            "png_stripped": read_back([strip_chunks(im) for im in marked], mid),
            "jpeg90": read_back([jpeg(im) for im in marked], mid),
            "jpeg75": read_back([jpeg(im, 75) for im in marked], mid),  # beyond the brief: where it starts to fail
        },
        # a 1-channel model's images carry the mark in their grey values: real grey photos stand in for them
        "grey_photos_marked": {
            "psnr_mean": statistics.mean(psnr(encode(im, mid), im) for im in grey_photos),
            "png_stripped": read_back([strip_chunks(encode(im, mid)) for im in grey_photos], mid),
            "jpeg90": read_back([jpeg(encode(im, mid)) for im in grey_photos], mid),
        },
        "false_positives": {name: read_back(images, None) for name, images in false_sets.items()},
    }
    for name, row in results["detection"].items():
        print(f"detection {name:13s}: {row['marked']}/{row['images']} marked, {row['right_id']} with the right id "
              f"(marker agreement min {row['agreement_min']:.2f}, id votes min "
              f"{row['id_agreement_min']:.2f})")  # fmt: skip
    g = results["grey_photos_marked"]
    print(f"grey photos marked: PSNR {g['psnr_mean']:.1f} dB; right id {g['png_stripped']['right_id']}/"
          f"{g['png_stripped']['images']} PNG-stripped, {g['jpeg90']['right_id']}/{g['jpeg90']['images']} "
          "JPEG 90")  # fmt: skip
    for name, row in results["false_positives"].items():
        print(f"false positives {name:26s}: {row['marked']}/{row['images']} (agreement max {row['agreement_max']:.2f},"
              f" median {row['agreement_median']:.2f})")  # fmt: skip
    print(f"PSNR marked vs unmarked: mean {results['psnr_mean']:.1f} dB, min {results['psnr_min']:.1f} dB, largest "
          f"pixel change {max_diff}; encode {encode_ms:.1f} ms, decode {decode_ms:.1f} ms per image")  # fmt: skip

    print("design sweep (method, channel, quantisation step):")
    results["design"] = design(unmarked, mid, args.scales)

    if args.real:
        other = generate(pipe, class_ids, args.seed + args.num_images, sampling)
        sets = {"unmarked": unmarked, "marked": marked, "marked_jpeg90": [jpeg(im) for im in marked],
                "unmarked_other_seeds": other}  # fmt: skip
        print(f"quality against {args.real}:")
        results["quality"] = quality(args, pipe, sets, class_ids)
        q = results["quality"]
        print(f"mark changed {q['predictions_changed_by_mark']}/{len(marked)} predicted classes; KID change "
              f"{q['kid_change_by_mark']:+.4f} (other seeds: {q['kid_change_other_seeds']:+.4f}, KID std "
              f"{q['unmarked']['kid_std']:.4f})")  # fmt: skip
    results["args"] = vars(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"record: {write_record('bench_watermark', results, args.record_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
