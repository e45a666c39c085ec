"""Where the ONNX face models (SCRFD, ArcFace) run: onnxruntime's CUDA provider when it has one,
else the CPU, said aloud.

`choose_providers(available, device)` is the whole rule: `auto` takes CUDA where onnxruntime
lists `CUDAExecutionProvider` (the `onnxruntime-gpu` wheel, `pip install '.[gpu]'`) with the CPU
behind it, and the CPU otherwise; `cpu` always the CPU; `cuda` refuses to start without CUDA
rather than run a GPU build on CPUs by surprise. A session built with CUDA that cannot create it
(no driver on this node) falls back to the CPU inside onnxruntime; `provider_of(session)` says
which one a model really got, for run.json and the summary.

`session_options(threads)` is how many CPU threads a session computes with: `threads` for its
operators (intra-op) and one between them (the models run sequentially), or onnxruntime's own
default (one per physical core, spinning while it waits for work) when `threads` is None. A
process that holds one CPU of a shared machine (a Ray analysis task) asks for 1: onnxruntime's
default there puts a second spinning thread on a core another worker computes on (issue 22: the
stand-in SCRFD cost 2x the CPU per frame with the default on 2 cores).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from mfhq_contract.errors import SetupError

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class OnnxDevice(StrEnum):
    """Where SCRFD and ArcFace run (`--onnx-device`)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def choose_providers(available: Sequence[str], device: str = OnnxDevice.AUTO) -> list[str]:
    """The providers to ask onnxruntime for, best first."""
    device = OnnxDevice(device)
    if device is OnnxDevice.CPU:
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device is OnnxDevice.CUDA:
        raise SetupError(
            f"ONNX models were asked to run on CUDA, but onnxruntime offers only "
            f"{', '.join(available) or 'nothing'}: install the GPU runtime "
            f"(pip uninstall -y onnxruntime && pip install '.[gpu]'), or use the CPU "
            f"(--onnx-device auto or cpu)")
    return [CPU_PROVIDER]


def session_providers(device: str = OnnxDevice.AUTO) -> list[str]:
    """`choose_providers` for this process's onnxruntime."""
    import onnxruntime

    return choose_providers(onnxruntime.get_available_providers(), device)


def session_options(threads: int | None = None):
    """onnxruntime SessionOptions computing on `threads` CPU threads (None: onnxruntime's
    default, a thread per physical core); pass as get_model's / InferenceSession's
    `sess_options`."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1   # sequential execution: no second pool to size
    return options


def provider_of(session) -> str:
    """The provider an onnxruntime session actually runs on (its first)."""
    return session.get_providers()[0]
