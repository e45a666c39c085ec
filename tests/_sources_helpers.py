"""Small hand-made dataset layouts for the source adapter tests.

Adapters never decode, so a "video" here is any non-empty file; the layouts follow
the README's "Sources and how identities are formed".
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from curation.records import ClipRecord

FIXTURES = Path(__file__).resolve().parent / "fixtures"   # a real CelebV-Text excerpt
CELEBVTEXT_SAMPLE = FIXTURES / "celebvtext_info-sample.json"


def touch(path: Path, data: bytes = b"not decoded by adapters") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_json(path: Path, payload) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def celebv_entry(ytb_id: str, start=1.5, end=4.0, top=0.1, bottom=0.8, left=0.2,
                 right=0.7, **more) -> dict:
    return {"ytb_id": ytb_id, "duration": {"start_sec": start, "end_sec": end},
            "bbox": {"top": top, "bottom": bottom, "left": left, "right": right}, **more}


def celebvhq_root(root: Path, clips: dict[str, dict]) -> Path:
    write_json(root / "celebvhq_info.json",
               {"meta_info": {"appearance_mapping": [], "action_mapping": []}, "clips": clips})
    return root


def vfhq_meta(root: Path, name: str, *, height=1080, width=1920, fps=25,
              crop=(600, 100, 1200, 700), frame_lines=3, text: str | None = None) -> Path:
    if text is None:
        lines = [f"H {height}", f"W {width}", f"FPS {fps}"]
        if crop is not None:
            lines.append("CROP " + " ".join(str(v) for v in crop))
        lines.append("NOTE per-frame: index x0 y0 x1 y1 landmarks")
        lines += [f"{i} 600 100 1200 700 1 2 3 4 5 6 7 8 9 10" for i in range(frame_lines)]
        text = "\n".join(lines) + "\n"
    path = root / "meta_info" / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tube_line(video_name: str, h=720, w=1280, s=0, e=99, left=300, top=100, right=700,
              bottom=500) -> str:
    return f"{video_name},{h},{w},{s},{e},{left},{top},{right},{bottom}"


def tube_clip_name(video_name: str, s=0, e=99, left=300, top=100, right=700,
                   bottom=500) -> str:
    return f"{video_name}_S{s}_E{e}_L{left}_T{top}_R{right}_B{bottom}"


def write_tubes(root: Path, splits: dict[str, list[str]], *, folder=True, archive=False) -> None:
    for split, lines in splits.items():
        text = "\n".join(lines) + "\n"
        if folder:
            path = root / "data_list" / f"{split}_video_tubes.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if archive:
            with zipfile.ZipFile(root / "data_list.zip", "a") as handle:
                handle.writestr(f"data_list/{split}_video_tubes.txt", text)
                handle.writestr(f"data_list/{split}_video_ids.txt", "")


def by_id(records: list[ClipRecord]) -> dict[str, ClipRecord]:
    result = {record.original_clip_id: record for record in records}
    assert len(result) == len(records), "original clip ids repeat"
    return result


# --- random layouts for the property test -------------------------------------------------------

def write_random_layout(root: Path, kind: str, names: list[str], documents: list,
                        blobs: list[bytes], make_videos: bool) -> None:
    """Fill `root` with metadata for `kind` built from hypothesis-drawn names/values/bytes."""
    if kind in ("celebvhq", "celebvtext"):
        meta = root / f"{kind}_info.json"
        document = documents[0] if documents else {}
        if blobs and blobs[0][:1] == b"!":
            touch(meta, blobs[0])
        elif isinstance(document, dict) and kind == "celebvhq" and len(documents) > 1:
            write_json(meta, {"clips": dict(zip(names, documents[1:], strict=False))})
        else:
            write_json(meta, dict(zip(names, documents, strict=False)) if names else document)
        if make_videos:
            for name in names:
                touch(root / "videos" / f"{name}.mp4")
    elif kind == "vfhq":
        for name, blob in zip(names, blobs or [b""], strict=False):
            touch(root / "meta" / f"Clip+{name}.txt", blob)
            if make_videos:
                touch(root / "clips" / f"Clip+{name}.mp4")
    elif kind == "talkinghead1kh":
        text = "\n".join(",".join([name, *(str(v) for v in documents[:8])]) for name in names)
        touch(root / "data_list" / "train_video_tubes.txt", text.encode("utf-8"))
        if blobs:
            touch(root / "data_list.zip", blobs[0])
        if make_videos:
            for name in names:
                touch(root / f"{name}.mp4")
    else:
        for index, name in enumerate(names):
            touch(root / (name if index % 2 else "person") / f"{name}.mp4", blobs[0] if blobs
                  else b"x")
