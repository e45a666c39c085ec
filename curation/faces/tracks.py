"""The clip's own person among a clip's detections: tracks, hints, ambiguity.

Faces of successive samples are linked into tracks (boxes that overlap or lie close); the clip's
person is the track the metadata's box hint points at, else the heaviest track (total face size
over the clip). Two people of similar size and no hint make the clip ambiguous
(`ambiguous_target`), unless an identity model can tell them apart later.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mfhq_faces.detection import Detection
from mfhq_faces.geometry import Box, box_centre, face_size, iou


def _same_face(reference: Box, box: Box) -> float:
    """Similarity of two boxes in consecutive samples; 0 means 'not the same face'."""
    overlap = iou(reference, box)
    distance = np.linalg.norm(box_centre(reference) - box_centre(box)) / max(face_size(reference), 1)
    if overlap < 0.15 and distance > 0.6:
        return 0.0
    return overlap + max(0.0, 1.0 - distance)


def matches_hint(hint: Box, box: Box) -> float:
    """How well a face box fits the metadata box hint (0 = not the hinted person).

    Hints are usually looser than detector boxes (CelebV-HQ's covers head and shoulders), so a
    face counts when its centre lies inside the hint; better-overlapping faces win.
    """
    centre = box_centre(box)
    if not (hint[0] <= centre[0] <= hint[2] and hint[1] <= centre[1] <= hint[3]):
        return 0.0
    inside = iou(hint, box) + (box[2] - box[0]) * (box[3] - box[1]) / max(
        (hint[2] - hint[0]) * (hint[3] - hint[1]), 1e-9)
    return 0.1 + inside


AMBIGUOUS_SIZE_RATIO = 0.8
AMBIGUOUS_FRAME_SHARE = 0.5


def ambiguous_target(per_frame: Sequence[Sequence[Detection]], chosen: Sequence[int | None],
                     ratio: float = AMBIGUOUS_SIZE_RATIO,
                     share: float = AMBIGUOUS_FRAME_SHARE) -> bool:
    """Whether a hint-less choice of the clip's person is a guess.

    Without a box hint the clip's person is the largest tracked face. When another face is at
    least `ratio` of its size in at least `share` of the frames where it was found, "largest"
    does not tell who the clip is about (a turned head has a smaller box than a frontal
    bystander), and guessing could put two people under one identity - the one mistake a
    multi-view identity dataset must not make.
    """
    frames = close = 0
    for target, detections in zip(chosen, per_frame, strict=True):
        if target is None:
            continue
        frames += 1
        size = face_size(detections[target].bbox)
        if any(i != target and face_size(d.bbox) >= ratio * size
               for i, d in enumerate(detections)):
            close += 1
    return frames > 0 and close >= share * frames


def select_target(per_frame: Sequence[Sequence[Detection]],
                  hint: Box | None = None) -> list[int | None]:
    """For each sampled frame, the index of the clip's own person's face, or None.

    With a hint: the face that fits the hint best, frame by frame. Without: the faces are linked
    into tracks across the samples and the clip's person is the track with the largest total
    face size - big and present through the clip - so a bystander who is large in one frame
    does not take over, and a person who turns away for a while is not lost.
    """
    if hint is not None:
        chosen: list[int | None] = []
        for dets in per_frame:
            scores = [matches_hint(hint, d.bbox) for d in dets]
            best = int(np.argmax(scores)) if scores else -1
            chosen.append(best if best >= 0 and scores[best] > 0 else None)
        return chosen
    chosen = [None] * len(per_frame)
    tracks = ranked_tracks(per_frame)
    if not tracks:
        return chosen
    for frame, index in tracks[0].items():
        chosen[frame] = index
    return chosen


def ranked_tracks(per_frame: Sequence[Sequence[Detection]]) -> list[dict[int, int]]:
    """`face_tracks`, the heaviest first: total face size over the clip (ties: earlier start).
    The first is the clip's person when there is no hint (`select_target`)."""
    def weight(track: dict[int, int]) -> tuple[float, int]:
        total = sum(face_size(per_frame[f][i].bbox) for f, i in track.items())
        return total, -min(track)

    return sorted(face_tracks(per_frame), key=weight, reverse=True)


def face_tracks(per_frame: Sequence[Sequence[Detection]]) -> list[dict[int, int]]:
    """Faces of successive samples linked into tracks ({frame: detection index}).

    Each frame's faces join the tracks whose last box they resemble most (`_same_face`, best
    pairs first, one face per track); a face that resembles none starts a new track.
    """
    tracks: list[dict[int, int]] = []
    last_box: list[Box] = []
    for frame, dets in enumerate(per_frame):
        pairs = sorted(((_same_face(last_box[t], d.bbox), t, i)
                        for t in range(len(tracks)) for i, d in enumerate(dets)),
                       key=lambda p: (-p[0], p[1], p[2]))
        taken_tracks: set[int] = set()
        taken_faces: set[int] = set()
        for score, t, i in pairs:
            if score <= 0 or t in taken_tracks or i in taken_faces:
                continue
            tracks[t][frame] = i
            last_box[t] = dets[i].bbox
            taken_tracks.add(t)
            taken_faces.add(i)
        for i, det in enumerate(dets):
            if i not in taken_faces:
                tracks.append({frame: i})
                last_box.append(det.bbox)
    return tracks
