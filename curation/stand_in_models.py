"""Writers of stand-in weight files with the real formats of the models we cannot download.

They exist so that the real loading code (insightface's model router, pyiqa's CFANet loader)
runs in tests, the benchmark and users' dry runs. The weights are random: outputs are
meaningless, but shapes, file formats and compute paths are those of the real models.

The face models' stand-ins (SCRFD, ArcFace) are `mfhq_faces.stand_ins`; this module holds
the build's own model, TOPIQ:
- TOPIQ face (`topiq_nr_cgfiqa_res50-0a8b8e4f.pth`): `{'params': state_dict}` of pyiqa's
  CFANet built as `topiq_nr-face` builds it (resnet50 backbone, random init). Same compute as
  the real model.
"""

from __future__ import annotations

from pathlib import Path

from curation.faces.quality import TOPIQ_FACE_FILE


def write_topiq_stand_in(dir_or_path: str | Path, seed: int = 0) -> Path:
    """A random-init TOPIQ-face checkpoint `{'params': state_dict}` with the real file name.

    `dir_or_path`: a directory (the file gets its real name there, e.g. pyiqa's cache dir
    `$TORCH_HOME/hub/pyiqa/`) or a full file path.
    """
    import torch

    from curation.faces.quality import build_topiq_face_network

    target = Path(dir_or_path)
    if target.suffix != ".pth":
        target = target / TOPIQ_FACE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    network = build_topiq_face_network(weights=None)
    torch.save({"params": network.state_dict()}, str(target))
    return target
