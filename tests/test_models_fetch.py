"""`mfhq models` and `mfhq models fetch` against a real HTTP server on 127.0.0.1 serving
stand-in weight files of the real formats (a buffalo_l.zip of SCRFD / ArcFace ONNX stand-ins, a
TOPIQ-face checkpoint), and the loaders that read what was fetched."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _s3_helpers import s3_server  # noqa: F401 - the fixture

from curation.models_fetch import (
    PUBLISHED,
    TOPIQ_FACE_FILE,
    ModelFetchError,
    download,
    fetch_published,
    local_model_file,
)
from mfhq.models import main as models_main

HOST = "127.0.0.1"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Behaviour:
    """How the server misbehaves, per file name, and what it saw."""

    cut_after: dict[str, int] = field(default_factory=dict)    # first response: close early
    fail_first: dict[str, int] = field(default_factory=dict)   # first response: this status
    trickle: dict[str, float] = field(default_factory=dict)    # seconds between 64 KiB blocks
    requests: list[tuple[str, str]] = field(default_factory=list)   # (path, Range header)


class FileServer:
    """A threaded HTTP/1.1 server of one folder on 127.0.0.1 that honours `Range` and can
    fail on purpose (a cut connection, a 503, a slow trickle), the way real servers fail."""

    def __init__(self, root: Path):
        self.root = root
        self.behaviour = Behaviour()
        behaviour, folder = self.behaviour, root

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):   # keep test output clean
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                behaviour.requests.append((name, self.headers.get("Range", "")))
                path = folder / name
                if name in behaviour.fail_first:
                    status = behaviour.fail_first.pop(name)
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                header = self.headers.get("Range", "")
                if header.startswith("bytes="):
                    start = int(header[len("bytes="):].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cut = behaviour.cut_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                pause = behaviour.trickle.get(name)
                step = 1 << 16
                for offset in range(0, len(body), step):
                    try:
                        self.wfile.write(body[offset:offset + step])
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    if pause:
                        time.sleep(pause)

        self.httpd = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture()
def served(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    with FileServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def face_stand_ins(tmp_path_factory) -> dict[str, Path]:
    from mfhq_faces.stand_ins import write_arcface_stand_in, write_scrfd_stand_in

    folder = tmp_path_factory.mktemp("face-stand-ins")
    return {"det_10g.onnx": write_scrfd_stand_in(folder / "det_10g.onnx"),
            "w600k_r50.onnx": write_arcface_stand_in(folder / "w600k_r50.onnx")}


@pytest.fixture(scope="module")
def topiq_stand_in(tmp_path_factory) -> Path:
    from curation.stand_in_models import write_topiq_stand_in

    return write_topiq_stand_in(tmp_path_factory.mktemp("topiq"))


def zip_pack(target: Path, files: dict[str, Path], extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as pack:
        for name, path in files.items():
            pack.write(path, name)
        for name, data in (extra or {}).items():
            pack.writestr(name, data)
    return target


def test_the_published_addresses_are_the_ones_insightface_and_pyiqa_download_from():
    from insightface.utils.storage import model_zoo_download_url
    from pyiqa.archs.topiq_arch import default_model_urls
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    assert PUBLISHED["buffalo_l"].url == model_zoo_download_url("buffalo_l.zip")
    config_name = DEFAULT_CONFIGS["topiq_nr-face"]["metric_opts"]["model_name"]
    assert PUBLISHED["topiq_nr-face"].url == default_model_urls[config_name]
    assert PUBLISHED["topiq_nr-face"].url.endswith("/" + TOPIQ_FACE_FILE)
    assert PUBLISHED["topiq_nr-face"].digest == "0a8b8e4f"


def test_fetch_unpacks_a_served_buffalo_l_zip_where_insightface_reads_it_and_the_detector_and_recogniser_load_it(  # noqa: E501
        served, face_stand_ins, tmp_path, capsys):
    zip_pack(served.root / "buffalo_l.zip", face_stand_ins, {"genderage.onnx": b"other file"})
    root = tmp_path / "insightface"

    assert models_main(["fetch", "buffalo_l", "--mirror", served.url,
                        "--insightface-root", str(root)]) == 0

    folder = root / "models" / "buffalo_l"
    for name, original in face_stand_ins.items():
        assert sha256_of(folder / name) == sha256_of(original)
    assert (folder / "genderage.onnx").read_bytes() == b"other file"
    leftovers = [p.name for p in (root / "models").rglob("*") if p.name.startswith(".")
                 or p.suffix == ".zip"]
    assert leftovers == []
    from mfhq_faces.detection import ScrfdFaceDetector, scrfd_model_path
    from mfhq_faces.embedders import make_embedder

    ScrfdFaceDetector(scrfd_model_path(root), device="cpu").close()
    make_embedder("arcface", str(root)).close()

    capsys.readouterr()
    assert models_main(["--insightface-root", str(root), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["scrfd"]["state"] == "found"
    assert rows["scrfd"]["sha256"] == sha256_of(face_stand_ins["det_10g.onnx"])
    assert rows["arcface"]["sha256"] == sha256_of(face_stand_ins["w600k_r50.onnx"])
    assert rows["arcface-eval"]["path"] == str(folder / "w600k_r50.onnx")

    served.behaviour.requests.clear()
    assert models_main(["fetch", "buffalo_l", "--mirror", served.url,
                        "--insightface-root", str(root)]) == 0
    assert served.behaviour.requests == [], "files already there are not downloaded again"


def test_models_lists_every_file_of_the_build_and_the_trainer_with_missing_ones_named(
        tmp_path, capsys):
    assert models_main(["--insightface-root", str(tmp_path / "none"),
                        "--quality-weights", str(tmp_path / TOPIQ_FACE_FILE),
                        "--backbone-weights", str(tmp_path / "clip.safetensors"),
                        "--flux", str(tmp_path), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) >= {"scrfd", "arcface", "topiq_nr-face", "mediapipe-facemesh",
                         "dlib-recogniser", "clip-vit-h-14", "flux.1-dev",
                         "flux-prompt-embeds", "arcface-eval"}
    assert rows["scrfd"]["state"] == rows["topiq_nr-face"]["state"] == "missing"
    assert rows["scrfd"]["fetch"] == "buffalo_l"
    assert rows["topiq_nr-face"]["fetch"] == "topiq_nr-face"
    assert rows["flux.1-dev"]["state"] == "found"   # a folder: found, not hashed
    assert rows["mediapipe-facemesh"]["state"] == "bundled"
    assert len(rows["mediapipe-facemesh"]["sha256"]) == 64

    assert models_main(["--insightface-root", str(tmp_path / "none")]) == 0
    err = capsys.readouterr().err
    assert "missing" in err and "scrfd" in err


def test_a_topiq_checkpoint_whose_sha256_does_not_start_with_the_published_prefix_is_refused(
        served, topiq_stand_in, tmp_path, capsys):
    (served.root / TOPIQ_FACE_FILE).symlink_to(topiq_stand_in)
    target = tmp_path / "hub" / "pyiqa" / TOPIQ_FACE_FILE

    code = models_main(["fetch", "topiq_nr-face", "--mirror", served.url,
                        "--quality-weights", str(target)])

    err = capsys.readouterr().err
    assert code == 2
    assert "checksum mismatch" in err and str(target) in err and "0a8b8e4f" in err
    assert "Traceback" not in err
    assert list(target.parent.iterdir()) == [], "nothing, not even a .part, is left"


def test_a_topiq_checkpoint_pinned_by_its_sha256_goes_to_pyiqas_cache_and_the_scorer_loads_it(
        served, topiq_stand_in, tmp_path, monkeypatch):
    (served.root / TOPIQ_FACE_FILE).symlink_to(topiq_stand_in)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    assert models_main(["fetch", "topiq_nr-face", "--mirror", served.url,
                        "--sha256", f"topiq_nr-face={sha256_of(topiq_stand_in)}"]) == 0

    from curation.faces.quality import QualityScorer, default_topiq_weights

    assert default_topiq_weights() == tmp_path / "torch" / "hub" / "pyiqa" / TOPIQ_FACE_FILE
    assert sha256_of(default_topiq_weights()) == sha256_of(topiq_stand_in)
    scorer = QualityScorer("topiq_nr-face")   # the default location, as the build reads it
    assert scorer.weights_sha256 == sha256_of(topiq_stand_in)


def test_an_unreachable_address_is_one_message_naming_the_address_and_the_destination(
        tmp_path, capsys):
    with FileServer(tmp_path) as server:
        closed = server.url   # the port is closed once the server stops
    root = tmp_path / "insightface"

    code = models_main(["fetch", "buffalo_l", "--mirror", closed, "--retries", "1",
                        "--insightface-root", str(root)])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    message = err[-1]
    assert f"{closed}/buffalo_l.zip" in message
    assert str(root / "models" / "buffalo_l.zip") in message
    assert "2 tries" in message and "copy the file" in message
    assert not (root / "models" / "buffalo_l").exists()


def test_a_download_cut_short_is_retried_and_resumed_from_the_byte_where_it_stopped(
        served, tmp_path):
    data = bytes(range(256)) * 4096   # 1 MiB
    (served.root / "weights.bin").write_bytes(data)
    served.behaviour.cut_after["weights.bin"] = 300_000

    fetched = download(f"{served.url}/weights.bin", tmp_path / "w" / "weights.bin",
                       sha256=hashlib.sha256(data).hexdigest(), backoff_s=0.01)

    assert fetched.path.read_bytes() == data and fetched.downloaded
    assert served.behaviour.requests == [("weights.bin", ""), ("weights.bin", "bytes=300000-")]


def test_a_server_error_is_retried_but_a_missing_file_is_not(served, tmp_path):
    (served.root / "weights.bin").write_bytes(b"x" * 1000)
    served.behaviour.fail_first["weights.bin"] = 503
    download(f"{served.url}/weights.bin", tmp_path / "a.bin", backoff_s=0.01)
    assert len(served.behaviour.requests) == 2

    served.behaviour.requests.clear()
    with pytest.raises(ModelFetchError, match="HTTP 404"):
        download(f"{served.url}/absent.bin", tmp_path / "b.bin", backoff_s=0.01)
    assert len(served.behaviour.requests) == 1
    assert not (tmp_path / "b.bin").exists()


def test_a_file_of_the_wrong_size_is_refused_before_it_is_put_in_place(served, tmp_path):
    (served.root / "weights.bin").write_bytes(b"x" * 1000)
    with pytest.raises(ModelFetchError, match="got 1000 bytes, the published size is 999"):
        download(f"{served.url}/weights.bin", tmp_path / "weights.bin", size=999)
    assert list(tmp_path.iterdir()) == [tmp_path / "served"]


def test_a_buffalo_l_zip_without_the_recogniser_is_refused(served, face_stand_ins, tmp_path):
    zip_pack(served.root / "buffalo_l.zip", {"det_10g.onnx": face_stand_ins["det_10g.onnx"]})
    root = tmp_path / "insightface"
    with pytest.raises(ModelFetchError, match="lacks w600k_r50.onnx"):
        fetch_published("buffalo_l", insightface_root=root, mirror=served.url)
    assert not (root / "models" / "buffalo_l").exists()
    assert list((root / "models").iterdir()) == []


def test_a_corrupted_buffalo_l_zip_fails_its_crc_check(served, face_stand_ins, tmp_path):
    pack = zip_pack(served.root / "buffalo_l.zip", face_stand_ins)
    raw = bytearray(pack.read_bytes())
    raw[200] ^= 0xFF   # inside the first member's compressed bytes
    pack.write_bytes(bytes(raw))
    with pytest.raises(ModelFetchError, match="CRC-32|not a zip|refused"):
        fetch_published("buffalo_l", insightface_root=tmp_path / "if", mirror=served.url)
    assert not (tmp_path / "if" / "models" / "buffalo_l").exists()


def test_a_download_slower_than_its_time_limit_stops_with_the_address_named(served, tmp_path):
    (served.root / "slow.bin").write_bytes(b"x" * (1 << 20))
    served.behaviour.trickle["slow.bin"] = 0.2   # 16 blocks: ~3 s
    started = time.monotonic()
    with pytest.raises(ModelFetchError, match="time limit") as error:
        download(f"{served.url}/slow.bin", tmp_path / "slow.bin", time_limit_s=0.5,
                 backoff_s=0.01)
    assert time.monotonic() - started < 2.5
    assert f"{served.url}/slow.bin" in str(error.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "served"]


def test_a_weight_flag_given_as_a_url_is_downloaded_once_into_the_model_cache(
        served, tmp_path, monkeypatch):
    (served.root / "w600k_r50.onnx").write_bytes(b"onnx bytes")
    monkeypatch.setenv("MFHQ_MODEL_CACHE", str(tmp_path / "cache"))
    url = f"{served.url}/w600k_r50.onnx"

    first = local_model_file(url)
    second = local_model_file(url)

    assert first == second and first.read_bytes() == b"onnx bytes"
    assert first.name == "w600k_r50.onnx" and first.is_relative_to(tmp_path / "cache")
    assert len(served.behaviour.requests) == 1
    assert local_model_file(str(first)) == first   # a local path is returned as it is


def test_fetch_reads_a_mirror_in_a_bucket_as_the_bucket_cluster_does(
        s3_server, face_stand_ins, tmp_path):  # noqa: F811 (the fixture)
    pack = zip_pack(tmp_path / "buffalo_l.zip", face_stand_ins)
    s3_server.upload(pack, s3_server.bucket("mfhq-models"), "models/buffalo_l.zip")
    root = tmp_path / "insightface"

    assert models_main(["fetch", "buffalo_l", "--mirror", "s3://mfhq-models/models/",
                        "--insightface-root", str(root)]) == 0

    folder = root / "models" / "buffalo_l"
    assert sha256_of(folder / "w600k_r50.onnx") == sha256_of(face_stand_ins["w600k_r50.onnx"])
