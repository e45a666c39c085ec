"""Shared session fixtures: the demo corpus (built once) and one demo build on a local Ray with
2 CPUs, reused by every test that needs real shards and manifests (build, report, verify)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

RAY_TEST_CPUS = 2

# The fast tier (`make test-fast`, `pytest -m "not slow"`) leaves out every test that needs one
# of these (directly or through another fixture): the demo corpus and the builds made from it,
# and a local Ray. Tests that start clusters, `ray job submit`, whole builds or training runs
# without them carry `pytest.mark.slow` themselves.
SLOW_FIXTURES = frozenset({"demo_corpus", "demo_build", "ray_local"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@dataclass
class DemoBuild:
    paths: object          # mfhq.demo.DemoPaths: workdir, corpus, output, shards, manifests
    corpus: dict           # the corpus summary (corpus.json): identities, clips, bad_inputs
    summary: object        # curation.executor.runner.BuildSummary of the first build
    shard_sha256: dict[str, str]   # shard path (relative to shards/) -> sha256 after the build

    @property
    def shards_dir(self) -> Path:
        return self.paths.shards

    @property
    def manifests_dir(self) -> Path:
        return self.paths.manifests


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """(DemoPaths, corpus summary) for the demo corpus with bad inputs, built once."""
    from mfhq.demo import build_corpus, demo_paths

    paths = demo_paths(tmp_path_factory.mktemp("demo"))
    return paths, build_corpus(paths, seed=0)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs for the whole session (the build reuses it)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=RAY_TEST_CPUS, include_dashboard=False,
                 log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def demo_build(demo_corpus, ray_local) -> DemoBuild:
    """The demo build (exactly the flags of `python -m mfhq.demo`), run once."""
    from curation.build_folder import file_sha256
    from mfhq.demo import run_demo_build

    paths, corpus = demo_corpus
    summary = run_demo_build(paths, ["--no-progress"])
    shas = {str(p.relative_to(paths.shards)): file_sha256(p)
            for p in sorted(paths.shards.glob("*/*.tar"))}
    return DemoBuild(paths, corpus, summary, shas)


@pytest.fixture(scope="session")
def small_build(demo_corpus, tmp_path_factory):
    """The small demo build (`_reliability_helpers.small_build_args`: 3 identities, one per
    shard, 2 CPUs), run once as its own process, undisturbed: (output, shard sha256s, manifest
    rows), the bytes that every killed, resumed, full-disk or bucket build of the same
    arguments must end with. Read it, never write into it."""
    from _reliability_helpers import manifest_rows, shard_hashes, small_build_args, start_build

    paths, _ = demo_corpus
    output = tmp_path_factory.mktemp("small-build") / "build"
    log = output.parent / "build.log"
    assert start_build(small_build_args(paths, output), log).wait(timeout=900) == 0, \
        log.read_text()[-3000:]
    return output, shard_hashes(output), manifest_rows(output)
