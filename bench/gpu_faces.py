"""Face detection (SCRFD) and identity embedding (ArcFace) on the GPU against the CPU: is the GPU
worth it for the build's ONNX face models (issue 23, "GPU where it pays")?

Contract: one table, one row per (model, where, batch), and a last line `RESULT ...` with the
GPU / CPU rate ratios. Every figure comes through the build's own wrappers, made the way the
build makes them: `mfhq_faces.detection.make_detector("insightface", root, device=, threads=)`
and `mfhq_faces.embedders.make_embedder("arcface", root, device=, threads=)`, so the sessions
have the build's providers (`mfhq_faces.onnx_runtime.session_providers`) and thread settings
(`session_options`). Each model is measured

- on the GPU (`device="cuda"`: onnxruntime's CUDAExecutionProvider) where onnxruntime lists it;
- on the CPU with 1 thread (`device="cpu", threads=1`: what a build's analysis task uses);
- on the CPU with onnxruntime's default threads (`threads=None`: a thread per physical core).

Each row names the provider the session really got (a CUDA session without a usable CUDA
falls back to the CPU inside onnxruntime, and the row says so). Inputs are real faces: SCRFD
detects on 1280 x 720 frames (the astronaut of scikit-image and insightface's group photo
`t1.jpg`, letterboxed as a 720p video frame) at the build's 640 x 640 detector input, one frame
a call, so rates are frames/s and detected faces/s; ArcFace embeds 112 x 112 aligned crops
(insightface's `Tom_Hanks_54745.png`, ArcFace's own alignment, and its mirror image) in
batches, the rate in faces/s. Models load and run `--warmup` calls before the clock starts
(CUDA's kernels and memory pools are set up on first use); each case is timed `--repeats`
times and the median rate is printed with the slowest and fastest repeat.

Weights: insightface's buffalo_l cannot be downloaded here, so by default the models are the
stand-ins of `mfhq_faces.stand_ins` (the real graph signatures and file formats, random tiny
graphs of one convolution per head) and the output says that the rates are the stand-ins'.
Those graphs cost a small fraction of the real networks (det_10g is ~10 GFLOP a 640 px frame,
w600k_r50 a ResNet-50), so their GPU / CPU ratios understate what the GPU gives the real
models. `--insightface-root ROOT` measures the real `ROOT/models/buffalo_l/{det_10g,
w600k_r50}.onnx` instead.

Without a CUDA provider (the CPU `onnxruntime` wheel, or no GPU) it prints the CPU rows, says
plainly that no GPU provider is available and exits 0: the bench runs anywhere.

    python bench/gpu_faces.py                  # full: 20 calls x 5 repeats, batches 1 8 32 128
    python bench/gpu_faces.py --quick          # smoke run: a few seconds on a CPU
    python bench/gpu_faces.py --insightface-root ~/.insightface   # the real buffalo_l models
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfhq_faces.detection import make_detector  # noqa: E402
from mfhq_faces.embedders import make_embedder  # noqa: E402
from mfhq_faces.onnx_runtime import CPU_PROVIDER, CUDA_PROVIDER  # noqa: E402

FRAME_W, FRAME_H = 1280, 720        # a 720p video frame
DETECTOR_INPUT = 640                # the build's SCRFD input (ScrfdFaceDetector's default)


def real_frames() -> list[np.ndarray]:
    """Real faces as 1280 x 720 RGB frames: the astronaut (one face) and insightface's group
    photo (several), each scaled to the frame's height and centred on black."""
    import cv2
    import insightface
    import skimage.data

    images = [skimage.data.astronaut()]
    group = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    if group.is_file():
        images.append(cv2.cvtColor(cv2.imread(str(group)), cv2.COLOR_BGR2RGB))
    frames = []
    for image in images:
        height, width = image.shape[:2]
        scale = min(FRAME_H / height, FRAME_W / width)
        size = (int(width * scale), int(height * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        frame = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
        y0, x0 = (FRAME_H - size[1]) // 2, (FRAME_W - size[0]) // 2
        frame[y0:y0 + size[1], x0:x0 + size[0]] = image
        frames.append(frame)
    return frames


def real_crops() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Real 112 x 112 aligned face crops (RGB) and their five points: insightface's ArcFace-
    aligned Tom Hanks and its mirror image (whose points are ArcFace's template, mirrored)."""
    import cv2
    import insightface
    from insightface.utils.face_align import arcface_dst

    path = Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"
    crop = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    crop = cv2.resize(crop, (112, 112), interpolation=cv2.INTER_AREA)
    points = np.asarray(arcface_dst, np.float32)
    mirrored = points.copy()
    mirrored[:, 0] = 111.0 - mirrored[:, 0]
    mirrored = mirrored[[1, 0, 2, 4, 3]]          # left / right eye and mouth corner swap
    return [crop, np.ascontiguousarray(crop[:, ::-1])], [points, mirrored]


def stand_in_root(folder: Path) -> Path:
    """A buffalo_l layout holding the stand-in SCRFD and ArcFace files."""
    from mfhq_faces.stand_ins import write_arcface_stand_in, write_scrfd_stand_in

    models = folder / "models" / "buffalo_l"
    write_scrfd_stand_in(models / "det_10g.onnx")
    write_arcface_stand_in(models / "w600k_r50.onnx")
    return folder


def timed(call, calls: int, repeats: int, warmup: int) -> list[float]:
    """Seconds per call of each repeat (`calls` calls each), after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    per_call = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        per_call.append((time.perf_counter() - started) / calls)
    return per_call


def rate_text(per_call: list[float], items: float) -> str:
    """Median rate (items/s) with the slowest-fastest repeat."""
    rates = sorted(items / s for s in per_call)
    return f"{statistics.median(rates):.1f} ({rates[0]:.1f}-{rates[-1]:.1f})"


def where_label(device: str, threads: int | None) -> str:
    if device == "cuda":
        return "gpu"
    return f"cpu {threads} thread" if threads else "cpu default threads"


def measure_detection(root: Path, device: str, threads: int | None, frames: list[np.ndarray],
                      args) -> dict:
    detector = make_detector("insightface", str(root), device=device, threads=threads)
    try:
        index = {"i": 0, "faces": 0}

        def call():
            frame = frames[index["i"] % len(frames)]
            index["i"] += 1
            index["faces"] += len(detector.detect(frame))

        per_call = timed(call, args.calls, args.repeats, args.warmup)
        calls_made = index["i"]
        faces_per_frame = index["faces"] / max(1, calls_made)
        return {"provider": detector.provider, "per_call": per_call,
                "faces_per_frame": faces_per_frame}
    finally:
        detector.close()


def measure_embedding(root: Path, device: str, threads: int | None, batch: int,
                      crops: list[np.ndarray], points: list[np.ndarray], args) -> dict:
    embedder = make_embedder("arcface", str(root), device=device, threads=threads)
    try:
        batch_crops = [crops[i % len(crops)] for i in range(batch)]
        batch_points = [points[i % len(points)] for i in range(batch)]
        out = embedder.embed(batch_crops, batch_points)
        assert out.shape == (batch, embedder.dim), out.shape
        per_call = timed(lambda: embedder.embed(batch_crops, batch_points), args.calls,
                         args.repeats, args.warmup)
        return {"provider": embedder.provider, "per_call": per_call}
    finally:
        embedder.close()


HEADER = ["model", "where", "provider", "batch", "frames/s", "faces/s", "ms/call"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [HEADER] + rows) for i in range(len(HEADER))]
    for r in [HEADER] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 calls x 2 repeats, batches 1 and 8 (seconds on a CPU)")
    p.add_argument("--insightface-root", default="",
                   help="measure the real ROOT/models/buffalo_l models (default: stand-ins)")
    p.add_argument("--calls", type=int, help="calls per timed repeat (20; quick 2)")
    p.add_argument("--repeats", type=int, help="timed repeats per case (5; quick 2)")
    p.add_argument("--warmup", type=int, help="untimed calls before the clock (5; quick 1)")
    p.add_argument("--batches", type=int, nargs="+",
                   help="ArcFace batch sizes (1 8 32 128; quick 1 8)")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="skip the cases left after this many seconds (0: no limit), so that a "
                        "caller's time limit still gets the table")
    args = p.parse_args(argv)
    # insightface's norm_crop calls a scikit-image method that warns on every crop: one line
    # per crop of library noise between the table's lines, not a finding of this bench
    warnings.filterwarnings("ignore", category=FutureWarning, module="insightface")
    args.calls = args.calls or (2 if args.quick else 20)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    args.batches = args.batches or ([1, 8] if args.quick else [1, 8, 32, 128])

    import onnxruntime

    available = onnxruntime.get_available_providers()
    gpu = CUDA_PROVIDER in available
    if gpu and hasattr(onnxruntime, "preload_dlls"):
        # onnxruntime-gpu finds CUDA and cuDNN in the nvidia-* wheels torch brought (a bare
        # GPU machine has no system CUDA toolkit); without them its CUDA session would fall
        # back to the CPU and the "gpu" rows would say so.
        try:
            onnxruntime.preload_dlls()
        except Exception as err:  # noqa: BLE001 - the rows name the provider really used
            print(f"# onnxruntime.preload_dlls() failed: {err}", file=sys.stderr)
    wheres = ([("cuda", None)] if gpu else []) + [("cpu", 1), ("cpu", None)]

    with tempfile.TemporaryDirectory(prefix="gpu-faces-") as tmp:
        if args.insightface_root:
            root = Path(args.insightface_root).expanduser()
            weights = f"real buffalo_l weights from {root}"
        else:
            root = stand_in_root(Path(tmp))
            weights = ("STAND-IN weights (mfhq_faces.stand_ins: the real graph signatures, tiny "
                       "random graphs): the rates are the stand-ins', not buffalo_l's; pass "
                       "--insightface-root with buffalo_l for the real models")
        print(f"# onnxruntime {onnxruntime.__version__}, providers: {', '.join(available)}")
        print(f"# {weights}")
        print(f"# SCRFD: {FRAME_W}x{FRAME_H} real frames at {DETECTOR_INPUT}x{DETECTOR_INPUT} "
              f"input, 1 frame a call; ArcFace: 112x112 real aligned crops, batches "
              f"{' '.join(map(str, args.batches))}; {args.warmup} warm-up calls, "
              f"{args.repeats} repeats of {args.calls} calls, median (slowest-fastest)",
              flush=True)
        frames = real_frames()
        crops, points = real_crops()
        rows, det_rate, emb_rate = [], {}, {}
        started = time.monotonic()

        def over_budget() -> bool:
            return bool(args.budget_s) and time.monotonic() - started > args.budget_s

        for device, threads in wheres:
            where = where_label(device, threads)
            if over_budget():
                rows.append(["scrfd", where, "skipped: time budget", "1", "", "", ""])
            else:
                m = measure_detection(root, device, threads, frames, args)
                det_rate[where] = statistics.median(1 / s for s in m["per_call"])
                faces = m["faces_per_frame"]
                rows.append(["scrfd", where, m["provider"], "1", rate_text(m["per_call"], 1),
                             rate_text(m["per_call"], faces) if faces else "0 (none detected)",
                             f"{1000 * statistics.median(m['per_call']):.2f}"])
            for batch in args.batches:
                if over_budget():
                    rows.append(["arcface", where, "skipped: time budget", str(batch), "", "",
                                 ""])
                    continue
                m = measure_embedding(root, device, threads, batch, crops, points, args)
                emb_rate[(where, batch)] = statistics.median(batch / s for s in m["per_call"])
                rows.append(["arcface", where, m["provider"], str(batch), "",
                             rate_text(m["per_call"], batch),
                             f"{1000 * statistics.median(m['per_call']):.2f}"])
            print(f"# {where} done", file=sys.stderr, flush=True)
        print_table(rows)

    real = "real" if args.insightface_root else "stand-ins"
    if not gpu:
        print(f"# no GPU provider: onnxruntime {onnxruntime.__version__} lists "
              f"{', '.join(available)} and no {CUDA_PROVIDER}; CPU rows only (a GPU machine "
              f"needs the onnxruntime-gpu wheel: bench/gpu_check.sh installs it from .whl/)")
        print(f"RESULT weights={real} gpu=none detection_gpu_over_cpu1=n/a "
              f"embedding_gpu_over_cpu1=n/a")
        return 0
    fell_back = [r for r in rows if r[1] == "gpu" and r[2] == CPU_PROVIDER]
    if fell_back:
        print(f"# the CUDA sessions fell back to {CPU_PROVIDER} (CUDA or cuDNN libraries not "
              f"found): the gpu rows are CPU rows")
    def ratio(rates: dict, gpu_key, cpu_key) -> str:   # n/a: a case skipped by the budget
        if gpu_key in rates and cpu_key in rates:
            return f"{rates[gpu_key] / rates[cpu_key]:.2f}"
        return "n/a"

    figures = [f"weights={real}", "gpu=" + ("fell-back-to-cpu" if fell_back else "cuda"),
               f"detection_gpu_over_cpu1={ratio(det_rate, 'gpu', 'cpu 1 thread')}",
               f"detection_gpu_over_cpu_default="
               f"{ratio(det_rate, 'gpu', 'cpu default threads')}"]
    for batch in args.batches:
        figures.append(f"embedding_b{batch}_gpu_over_cpu1="
                       f"{ratio(emb_rate, ('gpu', batch), ('cpu 1 thread', batch))}")
        figures.append(f"embedding_b{batch}_gpu_over_cpu_default="
                       f"{ratio(emb_rate, ('gpu', batch), ('cpu default threads', batch))}")
    print("RESULT " + " ".join(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
