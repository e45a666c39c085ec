"""Per-stage throughput of the staged build, and what it means for the full MFHQ build.

    python bench/stages.py                       # demo corpus clips, quality at batch 1/8/32/64
    python bench/stages.py --gpu-crops-per-s 900 # the GPU figure the projection uses

Measures, on this machine, in one run:
  analysis   sampled frames per second per CPU (one process = one Ray analysis task), on the
             demo corpus's real-face clips, with the demo build's analysis settings;
  quality    crops per second of TOPIQ-face (real network, stand-in weights: the cost is the
             network's, not the weights') and PIQE, at batch sizes 1, 8, 32, 64, on CPU (and on
             CUDA when torch sees a GPU);
  work files the cost per face of the clip's work file as the build writes it (raw crop, packed
             mask: `curation.pipeline.analyze.write_work` / `read_work`) against lossless PNG
             crops and masks (the format before issue 22), at 256 and 512 px crops;
then projects the full build (about 1,000 hours of video) on one 64-CPU + 1-GPU node and on
10 such nodes from those rates. Where no GPU was measured, the projection uses
`--gpu-crops-per-s` and says so. The baseline of each batch-size row is batch 1 in the same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")   # one analysis task = one CPU

import numpy as np  # noqa: E402

HOURS = 1000.0                 # the paper's ~1,000 hours of source video
IDENTITIES = 134_000           # MFHQ's identities
SCORED_PER_IDENTITY = 24       # 12 pose clusters x 2 sharpest (the build's defaults)
FRAMES_CAP_PER_CLIP = 48
MEAN_CLIP_S = 8.0              # CelebV-HQ / TalkingHead clips: a few to tens of seconds


def measure_analysis(corpus: Path, clips: int) -> dict[str, float]:
    from curation.faces.analysis import FaceAnalyzer
    from curation.pipeline.config import parse_args
    from curation.sources import enumerate_source
    from mfhq.demo import DEMO_BUILD_FLAGS

    config = parse_args(["--source", f"folder={corpus}", *DEMO_BUILD_FLAGS])
    records = [r for r in enumerate_source("folder", corpus) if r.ok][:clips]
    frames = faces = 0
    with FaceAnalyzer(config.analysis) as analyzer:
        analyzer.analyze_clip(records[0])          # models warm
        started = time.perf_counter()
        for record in records:
            result = analyzer.analyze_clip(record)
            frames += result.frames_decoded
            faces += sum(1 for c in result.candidates if c.usable)
        seconds = time.perf_counter() - started
    return {"clips": len(records), "frames": frames, "faces": faces, "seconds": seconds,
            "frames_per_s": frames / seconds, "faces_per_s": faces / seconds}


def measure_quality(model: str, weights: str | None, device: str, batches: list[int],
                    crops: int) -> dict[int, float]:
    from curation.faces.quality import QualityScorer

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (512, 512, 3), dtype=np.uint8) for _ in range(crops)]
    rates = {}
    for batch in batches:
        scorer = QualityScorer(model=model, weights=weights, device=device, batch_size=batch)
        scorer.score(images[:batch])                # warm
        started = time.perf_counter()
        scorer.score(images)
        rates[batch] = crops / (time.perf_counter() - started)
    return rates


def project(frames_per_cpu_s: float, cpu_crops_per_s: float, gpu_crops_per_s: float,
            nodes: int, cpus: int = 64) -> dict[str, float]:
    """Hours for the full build on `nodes` nodes of `cpus` CPUs + 1 GPU each."""
    clips = HOURS * 3600 / MEAN_CLIP_S
    frames = clips * min(FRAMES_CAP_PER_CLIP, MEAN_CLIP_S * 2.0)     # --sample-fps 2
    crops = IDENTITIES * SCORED_PER_IDENTITY
    analysis_h = frames / (frames_per_cpu_s * (cpus - 1) * nodes) / 3600
    quality_h = crops / (gpu_crops_per_s * nodes) / 3600
    cpu_only_quality_h = crops / (cpu_crops_per_s * (cpus - 1) * nodes) / 3600
    # The stages overlap (streaming): the slower one bounds the build.
    return {"frames": frames, "crops": crops, "analysis_h": analysis_h, "quality_h": quality_h,
            "build_h": max(analysis_h, quality_h), "cpu_only_quality_h": cpu_only_quality_h}


def measure_work_files(size: int, faces: int = 24, repeats: int = 3) -> dict[str, float]:
    """ms per face to write and to read back a work file of `faces` faces of `size` px, raw (the
    build's) and PNG (level 1 crops, level 6 masks); KB per face of each."""
    import io

    import cv2
    from PIL import Image
    from skimage import data

    from curation.faces.analysis import ClipAnalysis, FaceCandidate
    from curation.pipeline.analyze import ClipOutcome, read_work, write_work

    base = cv2.resize(data.astronaut(), (size, size))
    cands = []
    for i in range(faces):
        cand = FaceCandidate("c", i, 0.0, (0.0, 0.0, 1.0, 1.0), 1.0, 400.0, "candidate", None,
                             yaw=0.0, pitch=0.0, roll=0.0, sharpness=1.0)
        cand.crop = np.roll(base, i, axis=1)
        cand.mask = np.zeros((size, size), np.uint8)
        cv2.circle(cand.mask, (size // 2, size // 2), size // 3, 255, -1)
        cands.append(cand)
    analysis = ClipAnalysis("c", "ok", None, "", faces, size, size, 25.0, faces, cands)
    path = Path(tempfile.mkdtemp()) / "work.tar"
    out: dict[str, float] = {}
    started = time.perf_counter()
    for _ in range(repeats):
        write_work(path, analysis, ClipOutcome("ok", None, "", 0.0))
    out["raw_write_ms"] = (time.perf_counter() - started) / repeats / faces * 1e3
    started = time.perf_counter()
    for _ in range(repeats):
        read_work(path, lambda cand: True)
    out["raw_read_ms"] = (time.perf_counter() - started) / repeats / faces * 1e3
    out["raw_kb"] = path.stat().st_size / faces / 1e3

    def png(array, mode, level) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array, mode).save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    started = time.perf_counter()
    for _ in range(repeats):
        encoded = [(png(c.crop, "RGB", 1), png(c.mask, "L", 6)) for c in cands]
    out["png_write_ms"] = (time.perf_counter() - started) / repeats / faces * 1e3
    started = time.perf_counter()
    for _ in range(repeats):
        for crop, mask in encoded:
            np.asarray(Image.open(io.BytesIO(crop)).convert("RGB"))
            np.asarray(Image.open(io.BytesIO(mask)))
    out["png_read_ms"] = (time.perf_counter() - started) / repeats / faces * 1e3
    out["png_kb"] = sum(len(c) + len(m) for c, m in encoded) / faces / 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/stages.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "mfhq-bench-stages"))
    p.add_argument("--clips", type=int, default=6, help="clips for the analysis rate")
    p.add_argument("--crops", type=int, default=64, help="crops per quality measurement")
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--gpu-crops-per-s", type=float, default=900.0,
                   help="TOPIQ-face crops/s on one GPU for the projection when none is measured "
                        "(default 900: ResNet-50 TOPIQ at 512 px is ~25 GFLOP per crop; at 20 %% "
                        "of an A100's 312 bf16 TFLOP/s that is ~2,500/s, less decode and "
                        "transfer: 900 is a cautious figure, not a measurement)")
    ns = p.parse_args(argv)
    import torch

    from curation.democorpus import build_demo_corpus
    from curation.stand_in_models import write_topiq_stand_in

    torch.set_num_threads(1)
    work = Path(ns.workdir)
    corpus = work / "corpus"
    if not (corpus / "corpus.json").exists():
        build_demo_corpus(corpus, seed=0, with_bad_inputs=False)
    for size in (256, 512):
        w = measure_work_files(size)
        print(f"work file, {size} px face: raw (the build's) write {w['raw_write_ms']:.2f} ms, "
              f"read {w['raw_read_ms']:.2f} ms, {w['raw_kb']:.0f} KB; PNG write "
              f"{w['png_write_ms']:.2f} ms, read {w['png_read_ms']:.2f} ms, {w['png_kb']:.0f} KB")
    analysis = measure_analysis(corpus / "folder", ns.clips)
    print(f"analysis: {analysis['frames']} sampled frames of {analysis['clips']} clips in "
          f"{analysis['seconds']:.1f} s on 1 CPU = {analysis['frames_per_s']:.1f} frames/s per "
          f"CPU ({analysis['faces_per_s']:.1f} usable faces/s)")
    batches = [int(b) for b in ns.batches.split(",")]
    weights = str(write_topiq_stand_in(work / "topiq"))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    measured: dict[tuple[str, str], dict[int, float]] = {}
    for device in devices:
        for model, w in (("topiq_nr-face", weights), ("piqe", None)):
            if model == "piqe" and device == "cuda":
                continue
            rates = measure_quality(model, w, device, batches, ns.crops)
            measured[(model, device)] = rates
            row = "  ".join(f"b{b}: {r:6.2f}/s ({r / rates[batches[0]]:.2f}x)"
                            for b, r in rates.items())
            print(f"quality {model:<14} {device:<4} 1 thread  {row}")
    topiq_cpu = max(measured[("topiq_nr-face", "cpu")].values())
    gpu = measured.get(("topiq_nr-face", "cuda"))
    gpu_rate = max(gpu.values()) if gpu else ns.gpu_crops_per_s
    source = "measured here" if gpu else "assumed (--gpu-crops-per-s; no GPU here)"
    print(f"projection: {HOURS:.0f} h of video, {IDENTITIES} identities, GPU TOPIQ rate "
          f"{gpu_rate:.0f} crops/s ({source})")
    for nodes in (1, 10):
        f = project(analysis["frames_per_s"], topiq_cpu, gpu_rate, nodes)
        print(f"  {nodes:>2} x (64 CPU + 1 GPU): {f['frames'] / 1e6:.1f} M frames -> analysis "
              f"{f['analysis_h']:.1f} h; {f['crops'] / 1e6:.1f} M crops -> quality "
              f"{f['quality_h']:.1f} h on GPU ({f['cpu_only_quality_h']:.1f} h if scored on "
              f"the CPUs instead); build ~{f['build_h']:.1f} h (stages overlap)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
