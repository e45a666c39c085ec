"""Where SCRFD and ArcFace ran is said: the analyzer's providers, run.json and the summary."""

from __future__ import annotations

import json

import onnxruntime

from curation.faces.analysis import AnalysisConfig, FaceAnalyzer
from curation.faces.identity import IdentityConfig
from curation.pipeline.finalize import format_summary
from mfhq_faces.onnx_runtime import choose_providers
from mfhq_faces.stand_ins import write_arcface_stand_in, write_scrfd_stand_in


def test_the_analyzer_says_which_onnxruntime_provider_each_model_got(tmp_path):
    pack = tmp_path / "models" / "buffalo_l"
    write_scrfd_stand_in(pack / "det_10g.onnx")
    write_arcface_stand_in(pack / "w600k_r50.onnx")
    expected = choose_providers(onnxruntime.get_available_providers())[0]
    with FaceAnalyzer(AnalysisConfig(face_detector="insightface",
                                     insightface_root=str(tmp_path)),
                      IdentityConfig(model="arcface")) as analyzer:
        assert analyzer.providers() == {"detector": expected, "embedder": expected}
    with FaceAnalyzer(AnalysisConfig(face_detector="mediapipe", onnx_device="cpu"),
                      IdentityConfig(model="dlib")) as analyzer:
        assert analyzer.providers() == {"detector": "mediapipe (CPU, TF Lite)",
                                        "embedder": "dlib (CPU)"}


def test_run_json_and_the_summary_name_where_the_models_ran(demo_build):
    run = json.loads((demo_build.manifests_dir / "run.json").read_text())
    where = run["placement"]["analysis_providers"]
    # the demo: mediapipe's detector and dlib's recogniser, on every warmed-up worker
    assert where == {"detector mediapipe (CPU, TF Lite), embedder dlib (CPU)": where[
        "detector mediapipe (CPU, TF Lite), embedder dlib (CPU)"]}
    assert "models:     detector mediapipe (CPU, TF Lite), embedder dlib (CPU)" in \
        format_summary(demo_build.summary)
