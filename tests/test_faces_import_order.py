"""Regression: decord puts its bundled zlib 1.2.3 in the global symbol scope, after which cv2's
libpng fails on every PNG. Image files must still read when decord was imported first (as in a
Ray worker that decodes videos before it meets a VFHQ frame folder)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image


def run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


def test_frame_folder_of_pngs_reads_after_decord(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(3, 24, 32, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{i:08d}.png")
    np.save(tmp_path / "expected.npy", frames)
    proc = run_fresh(f"""
        import decord  # first, on purpose
        import numpy as np
        from curation.faces.decoding import open_frames
        reader = open_frames({str(tmp_path)!r})
        got = reader.read([0, 1, 2])
        assert np.array_equal(got, np.load({str(tmp_path / "expected.npy")!r})), "pixels differ"
        print("ok", got.shape)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok (3, 24, 32, 3)" in proc.stdout


def test_demo_corpus_photos_load_after_decord():
    proc = run_fresh("""
        import decord  # first, on purpose
        from curation.democorpus.faces_source import load_photos
        photos = load_photos()
        print(len(photos), min(p.rgb.shape[0] for p in photos))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, min_height = map(int, proc.stdout.split())
    assert count >= 4 and min_height > 100
