"""Speed of the per-face analysis on this CPU: sampled vs full decoding, and time per face for
detection, landmarks + pose, alignment, and each quality model.

Videos are generated here from a real face (skimage's astronaut, moving), at 720p.
Usage: python bench/analysis_speed.py [--clips 3] [--seconds 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.faces.decoding import open_frames, sample_indices  # noqa: E402
from curation.faces.quality import QualityScorer  # noqa: E402
from curation.stand_in_models import write_topiq_stand_in  # noqa: E402
from mfhq_faces.align import aligned_crop, alignment_matrix, five_points  # noqa: E402
from mfhq_faces.detection import MediapipeFaceDetector, ScrfdFaceDetector  # noqa: E402
from mfhq_faces.landmarks import FaceMeshLandmarker  # noqa: E402
from mfhq_faces.pose import head_pose  # noqa: E402
from mfhq_faces.stand_ins import write_scrfd_stand_in  # noqa: E402


@dataclass
class BenchConfig:
    clips: int = 3
    seconds: float = 8.0
    fps: float = 25.0
    sample_fps: float = 2.0
    threads: int = 1
    faces: int = 12
    quality_faces: int = 4


def make_clip(path: Path, seconds: float, fps: float, seed: int) -> Path:
    import skimage.data

    face = cv2.resize(skimage.data.astronaut(), (640, 640))
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (1280, 720))
    for i in range(int(seconds * fps)):
        angle = 10 * np.sin(i / fps)
        matrix = cv2.getRotationMatrix2D((320, 320), angle, 1.0)
        matrix[:, 2] += (320 + 40 * np.sin(i / 13), 40)
        frame = cv2.warpAffine(face, matrix, (1280, 720), borderMode=cv2.BORDER_REFLECT)
        frame = cv2.add(frame, rng.integers(0, 6, frame.shape, dtype=np.uint8))
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def timed(function, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - start) / repeat


def bench_decoding(clips: list[Path], config: BenchConfig) -> None:
    sampled = every = 0
    sampled_time = every_time = 0.0
    for clip in clips:
        with open_frames(str(clip), num_threads=config.threads) as source:
            info = source.info
            indices = sample_indices(0, info.num_frames - 1, info.fps, config.sample_fps, 48)
            start = time.perf_counter()
            for chunk in range(0, len(indices), 8):
                source.read(indices[chunk:chunk + 8])
            sampled_time += time.perf_counter() - start
            sampled += len(indices)
        with open_frames(str(clip), num_threads=config.threads) as source:
            start = time.perf_counter()
            for chunk in range(0, info.num_frames, 16):
                source.read(list(range(chunk, min(chunk + 16, info.num_frames))))
            every_time += time.perf_counter() - start
            every += info.num_frames
    print(f"decode 720p, sampled at {config.sample_fps} fps: {sampled} frames in "
          f"{sampled_time:.2f} s = {sampled / sampled_time:.1f} frames/s "
          f"({sampled_time / len(clips):.2f} s per clip)")
    print(f"decode 720p, every frame: {every} frames in {every_time:.2f} s = "
          f"{every / every_time:.1f} frames/s ({every_time / len(clips):.2f} s per clip)")


def bench_faces(clip: Path, config: BenchConfig, work: Path) -> None:
    with open_frames(str(clip)) as source:
        indices = sample_indices(0, source.info.num_frames - 1, source.info.fps, 2.0,
                                 config.faces)
        frames = list(source.read(indices))
    small = [cv2.resize(f, (640, 360), interpolation=cv2.INTER_AREA) for f in frames]
    mediapipe = MediapipeFaceDetector()
    per = timed(lambda: [mediapipe.detect(s) for s in small], 2) / len(small)
    print(f"detection mediapipe (640x360): {per * 1000:.1f} ms/frame")
    scrfd = ScrfdFaceDetector(write_scrfd_stand_in(work / "det_10g.onnx", score_bias=-8))
    per = timed(lambda: [scrfd.detect(s) for s in small], 1) / len(small)
    print(f"detection SCRFD stand-in (640 input; NOT det_10g's compute): {per * 1000:.1f} "
          f"ms/frame")
    boxes = [tuple(v / 0.5 for v in mediapipe.detect(s)[0].bbox) for s in small]
    landmarker = FaceMeshLandmarker()

    def landmarks_and_pose():
        for frame, box in zip(frames, boxes, strict=True):
            points = landmarker.landmarks(frame, box)
            head_pose(points, frame.shape[1], frame.shape[0])

    per = timed(landmarks_and_pose, 2) / len(frames)
    print(f"FaceMesh landmarks + head pose: {per * 1000:.1f} ms/face")
    points = [landmarker.landmarks(f, b) for f, b in zip(frames, boxes, strict=True)]
    per = timed(lambda: [aligned_crop(f, alignment_matrix(five_points(p), 512), 512)
                         for f, p in zip(frames, points, strict=True)], 3) / len(frames)
    print(f"alignment (512 px crop): {per * 1000:.2f} ms/face")
    crops = [aligned_crop(f, alignment_matrix(five_points(p), 512), 512)
             for f, p in zip(frames, points, strict=True)][:config.quality_faces]
    piqe = QualityScorer("piqe")
    per = timed(lambda: piqe.score(crops), 1) / len(crops)
    print(f"quality piqe (512 px): {per * 1000:.0f} ms/face")
    os.environ["TORCH_HOME"] = str(work / "torch")
    weights = write_topiq_stand_in(work / "torch" / "hub" / "pyiqa")
    topiq = QualityScorer("topiq_nr-face", weights=str(weights), batch_size=4)
    topiq.score(crops[:1])
    per = timed(lambda: topiq.score(crops), 1) / len(crops)
    print(f"quality TOPIQ-face, stand-in weights (same compute as the real model), batch 4: "
          f"{per * 1000:.0f} ms/face")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchConfig()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    config = BenchConfig(**vars(parser.parse_args()))
    cv2.setNumThreads(config.threads)
    import torch

    torch.set_num_threads(max(1, config.threads))
    print(f"threads: {config.threads} (cv2, decord, torch); CPUs here: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = [make_clip(work / f"clip{i}.mp4", config.seconds, config.fps, i)
                 for i in range(config.clips)]
        bench_decoding(clips, config)
        bench_faces(clips[0], config, work)


if __name__ == "__main__":
    main()
