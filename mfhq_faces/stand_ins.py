"""Stand-in weight files with the real formats of the face models we cannot download.

They exist so that the real loading code (insightface's model router) runs in tests, the
benchmarks and users' dry runs of both halves. The weights are random: outputs are meaningless,
but shapes, file formats and compute paths are those of the real models.

- SCRFD (`det_10g.onnx`): one input (1, 3, H, W) with dynamic H, W; nine outputs, for strides
  8, 16, 32: scores (N, 1), box distances (N, 4), five keypoints (N, 10), N = H/s * W/s * 2.
- ArcFace (`w600k_r50.onnx`): one input (batch, 3, 112, 112), one output (batch, 512).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS = 2
ARCFACE_SIZE = 112
ARCFACE_DIM = 512
OPSET = 13


def _conv_head(name: str, stride: int, channels: int, width: int, rng: np.random.Generator,
               weight_scale: float, bias: float):
    """Nodes mapping the input image to (H/s * W/s * anchors, width) like one SCRFD head."""
    from onnx import helper, numpy_helper

    out_channels = SCRFD_ANCHORS * width
    weight = (rng.standard_normal((out_channels, channels, stride, stride)) * weight_scale)
    initializers = [
        numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"),
        numpy_helper.from_array(np.full(out_channels, bias, np.float32), f"{name}_b"),
        numpy_helper.from_array(np.array([-1, width], np.int64), f"{name}_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", f"{name}_w", f"{name}_b"], [f"{name}_conv"],
                         kernel_shape=[stride, stride], strides=[stride, stride]),
        # (1, A*width, h, w) -> (1, h, w, A*width) -> (h*w*A, width): anchor-major per cell,
        # the order SCRFD's decoder assumes.
        helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [f"{name}_t", f"{name}_shape"], [f"{name}_flat"]),
    ]
    return nodes, initializers, f"{name}_flat"


def write_scrfd_stand_in(path: str | Path, seed: int = 0, score_bias: float = -4.0) -> Path:
    """A tiny ONNX with SCRFD's input/output signature (9 outputs, dynamic size).

    `score_bias` sets the logit offset of the scores: the default makes most anchors score
    below the usual 0.5 threshold (few, arbitrary detections); a positive value makes many.
    """
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, initializers, outputs = [], [], []
    groups: dict[str, list[str]] = {"score": [], "bbox": [], "kps": []}
    for stride in SCRFD_STRIDES:
        for kind, width, scale, bias in (("score", 1, 0.02, score_bias), ("bbox", 4, 0.05, 2.0),
                                         ("kps", 10, 0.05, 0.0)):
            head_nodes, head_init, flat = _conv_head(f"{kind}{stride}", stride, 3, width, rng,
                                                     scale, bias)
            nodes += head_nodes
            initializers += head_init
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [flat], [f"score_{stride}"]))
                groups[kind].append(f"score_{stride}")
            else:
                nodes.append(helper.make_node("Identity", [flat], [f"{kind}_{stride}"]))
                groups[kind].append(f"{kind}_{stride}")
    widths = {"score": 1, "bbox": 4, "kps": 10}
    for kind in ("score", "bbox", "kps"):   # SCRFD reads outputs as scores, boxes, keypoints
        for name in groups[kind]:
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                         [None, widths[kind]]))
    graph = helper.make_graph(
        nodes, "scrfd_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])],
        outputs, initializers)
    return _save_onnx(onnx, helper, graph, path)


def write_arcface_stand_in(path: str | Path, seed: int = 0) -> Path:
    """A tiny ONNX with ArcFace's signature: (batch, 3, 112, 112) -> (batch, 512)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    channels, stride = 8, 16
    cells = channels * (ARCFACE_SIZE // stride) ** 2
    initializers = [
        numpy_helper.from_array((rng.standard_normal((channels, 3, stride, stride)) * 0.05)
                                .astype(np.float32), "feat_w"),
        numpy_helper.from_array(np.zeros(channels, np.float32), "feat_b"),
        numpy_helper.from_array((rng.standard_normal((cells, ARCFACE_DIM)) * 0.05)
                                .astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(ARCFACE_DIM, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", "feat_w", "feat_b"], ["feat"],
                         kernel_shape=[stride, stride], strides=[stride, stride]),
        helper.make_node("Relu", ["feat"], ["feat_relu"]),
        helper.make_node("Flatten", ["feat_relu"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes, "arcface_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                       [None, 3, ARCFACE_SIZE, ARCFACE_SIZE])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [None, ARCFACE_DIM])],
        initializers)
    return _save_onnx(onnx, helper, graph, path)


def _save_onnx(onnx, helper, graph, path: str | Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mfhq-stand-in")
    model.ir_version = 8   # readable by older onnxruntime builds too
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
