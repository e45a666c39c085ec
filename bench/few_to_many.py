"""Does few-to-many training work? The paper's Table 2 trends, two ways.

    python bench/few_to_many.py --data demo --identities 96   # real faces, joint objective,
                                                              # the paper's evaluation (~45 min)
    python bench/few_to_many.py                 # procedural identities with known truth (~30 min)
    python bench/few_to_many.py --size gpu      # longer runs, on a GPU

`--data demo` (the study the README records): the demo corpus generator's real faces at
`--identities` (the real photographs' people plus documented variants of them), built into MFHQ
shards by the real build with the demo's settings (`mfhq democorpus` + `mfhq build`, reused from
`--work`), so the test split holds people the training split never saw (the build ties every
variant of a person into one split). Each Table 2 regime trains the tiny preset's encoder with
the joint objective (MTD warm-up, then MTD + the pixel DiT flow decoder) through the real
training loop, and is scored by the trainer's own evaluation (`training.eval.Evaluator`, EMA
weights) on every held-out identity: per decoder and k = 1, 3, 5, 7 inputs, ID similarity of the
generated and the real unseen target (dlib's ResNet recogniser, the build's offline identity
model: ArcFace's weights cannot be downloaded here), head-pose error (FaceMesh + solvePnP,
degrees) and reconstruction L1 inside the face. Mean +- std over seeds.

The default (`--data synthetic`):

Renders procedural multi-view identities (`training.synthetic`) as MFHQ shards, trains the
encoder + Masked Transformer Decoder with the real training loop (`training.train.train`) under
each regime of the paper's Table 2 (inputs-targets 3-8, 3-1, 3-5, 8-8 at mask ratio 0.95; 3-8 at
0.99 and 0.85), same steps, seeds and data for all, then evaluates on held-out identities.

Evaluation (lower is better everywhere): for every test identity and draw, one target view and a
nested order of the other seven views are fixed; the encoder sees the first k of them
(k = 1, 3, 5, 7), so the target's pose is never among the inputs. The MTD reconstructs the target
from a fixed random patch mask at one common ratio (`--eval-mask-ratio`, 0.95) for every regime;
the error is the mean absolute error in [-1, 1] pixel units over pixels that are hidden and inside
the face mask. Two probes sit beside it:
  * wrong identity: k = 3 inputs taken from another test identity. The gap to the right identity
    is how much identity information the tokens carry into the reconstruction.
  * side mark: the target is the view that shows the identity's side mark best; the error inside
    the mark's pixels is measured with 3 inputs that never show the mark versus 3 inputs of which
    one shows it. Only an encoder that carries pose-specific detail lowers the second.
Every number is mean +- std over seeds (sample std, ddof 1).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from training import synthetic
from training.blocks import patchify
from training.config import Stage, TrainConfig, tiny
from training.data import DataStats, decode_identity, expand_urls, stable_seed
from training.eval import load_model
from training.model import OmniID, to_signed, to_unit
from training.mtd import random_patch_mask
from training.train import train

K_VALUES = (1, 3, 5, 7)


@dataclass(frozen=True)
class Regime:
    n_in: int
    n_tgt: int
    mask_ratio: float

    @property
    def name(self) -> str:
        return f"{self.n_in}-{self.n_tgt}, {self.mask_ratio:.2f}"


# Table 2's column order: ours full, few-to-many ablations, MTD mask-ratio ablations.
REGIMES = (
    Regime(3, 8, 0.95), Regime(3, 1, 0.95), Regime(3, 5, 0.95), Regime(8, 8, 0.95),
    Regime(3, 8, 0.99), Regime(3, 8, 0.85),
)


def select_regimes(names: tuple[str, ...]) -> tuple[Regime, ...]:
    """Regimes named "IN-TGT@RATIO" (e.g. "3-8@0.95"), in Table 2's order; () means all."""
    if not names:
        return REGIMES
    wanted = set()
    for name in names:
        try:
            counts, ratio = name.split("@")
            n_in, n_tgt = (int(v) for v in counts.split("-"))
            regime = Regime(n_in, n_tgt, float(ratio))
        except ValueError:
            raise SystemExit(f"bad regime {name!r}: expected IN-TGT@RATIO, e.g. 3-8@0.95") from None
        if not (1 <= regime.n_in <= 8 and 1 <= regime.n_tgt <= 8 and 0 < regime.mask_ratio < 1):
            raise SystemExit(f"bad regime {name!r}: need 1..8 inputs and targets, ratio in (0, 1)")
        wanted.add(regime)
    return tuple(r for r in REGIMES if r in wanted) + tuple(
        sorted(wanted - set(REGIMES), key=lambda r: (r.n_in, r.n_tgt, r.mask_ratio)))


@dataclass(frozen=True)
class BenchSize:
    image_size: int
    patch: int
    train_identities: int
    test_identities: int
    steps: int
    batch: int
    lr: float
    warmup: int
    eval_draws: int  # (target, input order) draws per test identity


SIZES = {
    # 2 CPU cores: all 18 runs plus rendering inside ~30 min even on a shared machine; 32 px with 4 px patches keeps the 64-patch grid
    # of the tiny preset, so mask ratios 0.85 / 0.95 / 0.99 leave ~10 / 3 / 1 patches visible.
    "default": BenchSize(32, 4, 1500, 96, 150, 8, 1e-3, 20, 1),
    "smoke": BenchSize(32, 4, 64, 8, 4, 4, 1e-3, 2, 1),
    "gpu": BenchSize(64, 8, 20000, 500, 5000, 64, 5e-4, 250, 4),
}


@dataclass
class BenchConfig:
    size: str = "default"
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_mask_ratio: float = 0.95
    work: Path = Path("/tmp/few_to_many")
    data_seed: int = 0
    device: str = "auto"
    threads: int = 0  # 0: torch's default
    steps: int = 0  # 0: the size's steps
    regimes: tuple[str, ...] = ()  # () = all of REGIMES, else names like "3-8@0.95"
    json_out: Path | None = None


def make_data(size: BenchSize, work: Path, data_seed: int) -> tuple[str, str]:
    """Render (or reuse) the shards; returns (train URLs, test URLs) as brace-free lists."""
    root = work / f"data-{size.image_size}px-{size.train_identities}-{size.test_identities}" \
                  f"-s{data_seed}"
    done = root / "DONE"
    if not done.exists():
        start = time.perf_counter()
        synthetic.write_shards(synthetic.SyntheticConfig(
            out=root, identities=size.train_identities, test_identities=size.test_identities,
            size=size.image_size, seed=data_seed, per_shard=250,
            workers=os.cpu_count() or 1, progress=True))
        done.write_text("ok\n")
        print(f"rendered data in {time.perf_counter() - start:.0f}s: {root}", flush=True)
    train_urls = sorted(str(p) for p in (root / "train").glob("*.tar"))
    test_urls = sorted(str(p) for p in (root / "test").glob("*.tar"))
    return "::".join(train_urls), "::".join(test_urls)


def run_config(size: BenchSize, regime: Regime, seed: int, shards: str, out: Path,
               device: str) -> TrainConfig:
    config = tiny()
    config.shards, config.out, config.device, config.seed = shards, str(out), device, seed
    config.max_steps, config.batch_size = size.steps, size.batch
    config.ckpt_every, config.keep_checkpoints, config.log_every = size.steps, 1, 25
    config.data.image_size = size.image_size
    config.backbone.patch_size = config.mtd.patch_size = size.patch
    config.data.n_in, config.data.n_tgt = regime.n_in, regime.n_tgt
    config.mtd.mask_ratio = regime.mask_ratio
    config.optim.lr, config.optim.warmup_steps = size.lr, size.warmup
    config.data.shuffle_buffer = min(256, size.train_identities)
    config.data.samples_per_epoch = size.train_identities
    return config


@dataclass
class TestIdentity:
    key: str
    identity_id: str
    images: torch.Tensor  # uint8 [8, 3, S, S]
    faces: torch.Tensor  # float [8, 1, S, S] in {0, 1}
    marks: torch.Tensor  # float [8, 1, S, S]: 1 on the side mark's pixels


def load_test_identities(urls: str, image_size: int) -> list[TestIdentity]:
    """Decode the held-out shards with the trainer's decoder; re-render the part labels."""
    stats = DataStats()
    out = []
    for sample in wds.WebDataset(expand_urls(urls), shardshuffle=False, empty_check=False):
        identity = decode_identity(sample, image_size, stats)
        if identity is None or len(identity.images) != 8:
            continue
        identity_id = identity.record["identity_id"]
        params = synthetic.identity_params(identity_id)
        views = synthetic.spread_views(identity_id)
        marks = np.stack([
            synthetic.render(params, v, image_size).parts == synthetic.Part.MARK for v in views])
        out.append(TestIdentity(
            key=identity.key, identity_id=identity_id,
            images=torch.from_numpy(np.stack(identity.images)),
            faces=torch.from_numpy(np.stack(identity.masks) > 127).float(),
            marks=torch.from_numpy(marks[:, None]).float(),
        ))
    out.sort(key=lambda t: t.key)
    return out


@dataclass(frozen=True)
class Probe:
    """One evaluation item: whose inputs, which views, which target, which hidden patches."""

    input_identity: int
    input_views: tuple[int, ...]
    target_identity: int
    target_view: int
    hidden: torch.Tensor  # bool [num_patches]
    region: str = "face"  # "face" | "mark"


def fixed_probes(identities: list[TestIdentity], draws: int, num_patches: int,
                 mask_ratio: float) -> dict[str, list[Probe]]:
    """The same probes for every regime and seed (a function of the test set alone)."""
    probes: dict[str, list[Probe]] = {f"k={k}": [] for k in K_VALUES}
    probes["wrong identity k=3"] = []
    probes["mark: inputs without it"] = []
    probes["mark: inputs with it"] = []
    count = len(identities)
    for index, identity in enumerate(identities):
        for draw in range(draws):
            rng = random.Random(stable_seed("few_to_many-eval", identity.key, draw))
            target = rng.randrange(8)
            order = [v for v in range(8) if v != target]
            rng.shuffle(order)
            generator = torch.Generator().manual_seed(stable_seed("mask", identity.key, draw)
                                                      % 2**63)
            hidden = random_patch_mask(1, num_patches, mask_ratio, generator)[0]
            for k in K_VALUES:
                probes[f"k={k}"].append(Probe(index, tuple(order[:k]), index, target, hidden))
            if count > 1:  # another identity, a different one for each draw where possible
                other = (index + 1 + draw % (count - 1)) % count
                probes["wrong identity k=3"].append(
                    Probe(other, tuple(order[:3]), index, target, hidden))
        probes["mark: inputs without it"] += _mark_probes(identity, index, num_patches,
                                                          mask_ratio, with_mark=False)
        probes["mark: inputs with it"] += _mark_probes(identity, index, num_patches, mask_ratio,
                                                       with_mark=True)
    return probes


def _mark_probes(identity: TestIdentity, index: int, num_patches: int, mask_ratio: float,
                 with_mark: bool) -> list[Probe]:
    """Target: the view showing most of the mark. Inputs: the 3 views furthest from it in yaw
    (which never show the mark), or the 2 furthest plus the second-best mark view."""
    mark_area = identity.marks.flatten(1).sum(1)
    ranked = sorted(range(8), key=lambda v: -float(mark_area[v]))
    target, second = ranked[0], ranked[1]
    if mark_area[target] < 4 or mark_area[second] < 1:
        return []
    far = sorted((v for v in range(8) if mark_area[v] == 0), key=lambda v: -abs(v - target))
    if len(far) < 3:
        return []
    inputs = (far[0], far[1], second) if with_mark else tuple(far[:3])
    generator = torch.Generator().manual_seed(stable_seed("mark-mask", identity.key) % 2**63)
    hidden = random_patch_mask(1, num_patches, mask_ratio, generator)[0]
    return [Probe(index, inputs, index, target, hidden, region="mark")]


@torch.no_grad()
def probe_errors(model: OmniID, identities: list[TestIdentity], probes: list[Probe],
                 device: torch.device, batch: int = 32) -> list[float]:
    """Mean absolute error per probe, over hidden pixels inside the probe's region."""
    errors = []
    patch = model.mtd.patch
    for start in range(0, len(probes), batch):
        chunk = probes[start:start + batch]
        inputs = torch.stack([identities[p.input_identity].images[list(p.input_views)]
                              for p in chunk]).to(device)
        targets = torch.stack([identities[p.target_identity].images[p.target_view]
                               for p in chunk]).to(device)
        regions = torch.stack([
            (identities[p.target_identity].marks if p.region == "mark"
             else identities[p.target_identity].faces)[p.target_view] for p in chunk]).to(device)
        hidden = torch.stack([p.hidden for p in chunk]).to(device)
        ids = model.encoder(to_unit(inputs))
        patches = patchify(to_signed(targets), patch)
        pred = model.mtd(patches, hidden, ids).float()
        weight = patchify(regions.expand_as(targets), patch) * hidden.unsqueeze(-1)
        error = ((pred - patches).abs() * weight).flatten(1).sum(1)
        counted = weight.flatten(1).sum(1)
        for e, c in zip(error.tolist(), counted.tolist(), strict=True):
            if c > 0:
                errors.append(e / c)
    return errors


def evaluate(model: OmniID, identities: list[TestIdentity],
             probes: dict[str, list[Probe]], device: torch.device) -> dict[str, float]:
    model.eval()
    return {name: float(np.mean(probe_errors(model, identities, items, device)))
            if items else float("nan") for name, items in probes.items()}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def print_tables(results: dict[str, dict[int, dict[str, dict[str, float]]]],
                 config: BenchConfig, size: BenchSize, regimes: tuple[Regime, ...]) -> None:
    names = [r.name for r in regimes]
    width = 17

    def row(label: str, cells: list[str]) -> str:
        return f"{label:<28}" + "".join(f"{c:>{width}}" for c in cells)

    def cell(regime: str, evaluation: str, metric: str) -> str:
        per_seed = results[regime]
        return mean_std([per_seed[s][evaluation][metric] for s in sorted(per_seed)])

    print()
    print(f"Table 2 shape: masked-region L1 (lower is better), held-out identities, "
          f"mean ± std over seeds {list(config.seeds)}")
    print(f"eval mask ratio {config.eval_mask_ratio} for every regime "
          f"(own: at the regime's training ratio); targets never among the inputs")
    print(row("I-O, mask ratio", names))
    print(row("k=3, eval ratio common", [cell(n, "common", "k=3") for n in names]))
    print(row("k=3, eval at own ratio", [cell(n, "own", "k=3") for n in names]))
    print(row("wrong identity k=3", [cell(n, "common", "wrong identity k=3") for n in names]))
    print(row("mark: inputs without it", [cell(n, "common", "mark: inputs without it")
                                          for n in names]))
    print(row("mark: inputs with it", [cell(n, "common", "mark: inputs with it")
                                       for n in names]))
    print()
    print("Error vs number of input images k (common eval ratio), mean ± std over seeds")
    print(row("I-O, mask ratio", [f"k={k}" for k in K_VALUES]))
    for name in names:
        print(row(name, [cell(name, "common", f"k={k}") for k in K_VALUES]))
    print()
    print(f"size {config.size}: {asdict(size)}")


def run(config: BenchConfig) -> dict:
    size = SIZES[config.size]
    if config.steps > 0:
        size = replace(size, steps=config.steps)
    regimes = select_regimes(config.regimes)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if config.device == "auto" else config.device))
    config.work.mkdir(parents=True, exist_ok=True)
    train_urls, test_urls = make_data(size, config.work, config.data_seed)
    identities = load_test_identities(test_urls, size.image_size)
    num_patches = (size.image_size // size.patch) ** 2
    common = fixed_probes(identities, size.eval_draws, num_patches, config.eval_mask_ratio)
    own_cache: dict[float, dict[str, list[Probe]]] = {}
    print(f"{len(identities)} test identities; {len(regimes)} regimes x {len(config.seeds)} "
          f"seeds x {size.steps} steps of {size.batch} identities on {device}", flush=True)

    results: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    bench_start = time.perf_counter()
    for regime in regimes:
        if regime.mask_ratio not in own_cache:
            own_cache[regime.mask_ratio] = fixed_probes(identities, size.eval_draws,
                                                        num_patches, regime.mask_ratio)
        own = {"k=3": own_cache[regime.mask_ratio]["k=3"]}
        for seed in config.seeds:
            start = time.perf_counter()
            out = config.work / "runs" / f"{config.size}-{size.steps}-{regime.n_in}" \
                f"-{regime.n_tgt}-{regime.mask_ratio}-seed{seed}"
            summary = train(run_config(size, regime, seed, train_urls, out, str(device)),
                            progress=False)
            trained = time.perf_counter() - start
            model, _ = load_model(summary["checkpoint"], device)
            scores = {"common": evaluate(model, identities, common, device),
                      "own": evaluate(model, identities, own, device)}
            results.setdefault(regime.name, {})[seed] = scores
            print(f"[{time.perf_counter() - bench_start:6.0f}s] {regime.name} seed {seed}: "
                  f"train loss {summary['loss']:.4f}, train {trained:.0f}s, "
                  f"eval {time.perf_counter() - start - trained:.0f}s, "
                  f"k=1/3/5/7 " + " ".join(f"{scores['common'][f'k={k}']:.4f}"
                                          for k in K_VALUES), flush=True)
    print_tables(results, config, size, regimes)
    print(f"total {time.perf_counter() - bench_start:.0f}s (training + eval)")
    report = {"config": {**asdict(config), "work": str(config.work),
                         "json_out": str(config.json_out)},
              "size": asdict(size), "results": results}
    if config.json_out:
        config.json_out.write_text(json.dumps(report, indent=1))
    return report


@dataclass(frozen=True)
class DemoSize:
    image_size: int
    patch: int
    steps: int
    mtd_warmup: int
    batch: int
    lr: float
    warmup: int
    eval_identities: int  # held-out identities scored per run (0: all)


DEMO_SIZES = {
    # 2 shared CPU cores (others' jobs took ~3/4 of them while it ran): 18 runs in ~40 min
    "default": DemoSize(64, 8, 60, 20, 8, 1e-3, 6, 12),
    "smoke": DemoSize(32, 8, 4, 2, 2, 1e-3, 2, 2),
    "gpu": DemoSize(128, 16, 5000, 1000, 32, 5e-4, 250, 0),
}


def make_demo_data(identities: int, work: Path, seed: int = 0) -> Path:
    """The demo corpus at `identities` and its MFHQ build (reused when done); returns the
    build folder. Runs the real commands: `mfhq democorpus` and `mfhq build` (demo flags)."""
    import subprocess

    from mfhq.demo import DEMO_BUILD_FLAGS

    corpus, build = work / f"corpus-{identities}-s{seed}", work / f"build-{identities}-s{seed}"
    done = build / "DONE"
    if done.exists():
        return build
    start = time.perf_counter()
    python = [sys.executable, "-m", "mfhq"]
    subprocess.run(python + ["democorpus", str(corpus), "--identities", str(identities),
                             "--seed", str(seed)], check=True)
    sources = []
    for kind in ("celebvhq", "celebvtext", "vfhq", "talkinghead1kh", "folder"):
        if (corpus / kind).is_dir():
            sources += ["--source", f"{kind}={corpus / kind}"]
    subprocess.run(python + ["build", *sources, "--output", str(build), *DEMO_BUILD_FLAGS,
                             "--no-progress"], check=True)
    done.write_text("ok\n")
    print(f"built demo data in {time.perf_counter() - start:.0f}s: {build}", flush=True)
    return build


def demo_run_config(size: DemoSize, regime: Regime, seed: int, shards: str, out: Path,
                    device: str, samples: int) -> TrainConfig:
    config = tiny()
    config.stage = Stage.JOINT
    config.shards, config.out, config.device, config.seed = shards, str(out), device, seed
    config.max_steps, config.batch_size = size.steps, size.batch
    config.ckpt_every, config.keep_checkpoints, config.log_every = size.steps, 1, 25
    config.objective.mtd_warmup_steps = size.mtd_warmup
    config.data.image_size = size.image_size
    config.backbone.patch_size = config.mtd.patch_size = config.flow.patch_size = size.patch
    config.data.n_in, config.data.n_tgt = regime.n_in, regime.n_tgt
    config.mtd.mask_ratio = regime.mask_ratio
    config.optim.lr, config.optim.warmup_steps = size.lr, size.warmup
    config.optim.ema_decay = 0.9
    config.data.shuffle_buffer = min(64, samples)
    config.data.samples_per_epoch = samples
    return config


DEMO_METRICS = ("id_similarity", "pose_error", "l1_face")


def run_demo(args: argparse.Namespace) -> dict:
    """The real-face study of the module doc; prints its tables, returns every number."""
    from mfhq_contract.terminal import quiet_terminal
    from mfhq_faces.embedders import DlibEmbedder
    from training.eval import Evaluator

    size = DEMO_SIZES[args.size if args.size in DEMO_SIZES else "default"]
    if args.steps > 0:
        size = replace(size, steps=args.steps)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    build = args.build or make_demo_data(args.identities, args.work)
    def samples(urls: list[str]) -> int:
        return sum(1 for u in urls for _ in wds.WebDataset(u, shardshuffle=False,
                                                          empty_check=False))

    train_shards = sorted(str(p) for p in (build / "shards" / "train").glob("*.tar"))
    test_shards = sorted(str(p) for p in (build / "shards" / "test").glob("*.tar"))
    if not samples(test_shards):
        # The demo corpus's identities are 9 real people and variants of them; the build's
        # cross-split check ties every variant to its person's split, which can leave the
        # test split empty. Then the last shards of the training split are held out: unseen
        # identities (other clips, crops, colours), though of people training has seen.
        train_shards, test_shards = train_shards[:-args.holdout_shards], train_shards[-args.holdout_shards:]
        print(f"note: the build's test split is empty; holding out the last "
              f"{args.holdout_shards} training shards ({samples(test_shards)} identities) instead",
              flush=True)
    if not train_shards or not samples(test_shards):
        raise SystemExit(f"{build} has no train or no test samples; build more identities")
    train_urls, test_urls = "::".join(train_shards), "::".join(test_shards)
    train_ids = samples(train_shards)
    regimes = select_regimes(tuple(args.regimes))
    embedder = DlibEmbedder()
    print(f"{train_ids} training identities; {len(regimes)} regimes x {len(args.seeds)} seeds x "
          f"{size.steps} steps of {size.batch} on {device}; {asdict(size)}", flush=True)
    results: dict[str, dict[int, list[dict]]] = {}
    bench_start = time.perf_counter()
    log = args.work / "library.log"
    for regime in regimes:
        for seed in args.seeds:
            start = time.perf_counter()
            out = args.work / "runs-demo" / f"{args.size}-{size.steps}-{regime.n_in}" \
                f"-{regime.n_tgt}-{regime.mask_ratio}-seed{seed}"
            config = demo_run_config(size, regime, seed, train_urls, out, device, train_ids)
            with quiet_terminal(log):
                summary = train(config, progress=False)
                trained = time.perf_counter() - start
                model, saved = load_model(summary["checkpoint"], device)
                evaluator = Evaluator(saved, device, seed=0, batch_size=8, arcface="",
                                      pose=True, embedder=embedder)
                rows = evaluator.run(model, test_urls, K_VALUES,
                                     max_samples=size.eval_identities or None,
                                     weights=model.encoder_weights)
            results.setdefault(regime.name, {})[seed] = rows
            k3 = next(r for r in rows if r["n_in"] == 3)
            print(f"[{time.perf_counter() - bench_start:6.0f}s] {regime.name} seed {seed}: "
                  f"loss {summary['loss']:.4f}, train {trained:.0f}s, eval "
                  f"{time.perf_counter() - start - trained:.0f}s, {k3['samples']} test ids, k=3: "
                  + ", ".join(f"{d}_{m} {_fmt(k3.get(f'{d}_{m}'))}" for d in ("mtd", "flow")
                              for m in DEMO_METRICS), flush=True)
    print_demo_tables(results, regimes, args.seeds)
    print(f"total {time.perf_counter() - bench_start:.0f}s (training + eval)")
    report = {"size": asdict(size), "identities": args.identities, "build": str(build),
              "train_identities": train_ids, "test_shards": test_urls.split("::"),
              "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_demo_tables(results: dict, regimes: tuple[Regime, ...], seeds) -> None:
    names = [r.name for r in regimes]

    def cell(regime: str, k: int, key: str) -> str:
        values = [row[key] for s in sorted(results[regime])
                  for row in results[regime][s] if row["n_in"] == k and row.get(key) is not None]
        return mean_std(values) if values else "-"

    for decoder in ("mtd", "flow"):
        for metric in DEMO_METRICS:
            key = f"{decoder}_{metric}"
            better = "higher" if metric == "id_similarity" else "lower"
            print()
            print(f"{key} ({better} is better), held-out identities, mean ± std over seeds "
                  f"{list(seeds)}")
            print(f"{'I-O, mask ratio':<18}" + "".join(f"{f'k={k}':>17}" for k in K_VALUES))
            for name in names:
                print(f"{name:<18}" + "".join(f"{cell(name, k, key):>17}" for k in K_VALUES))


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="default: 2 CPU cores ~30 min; gpu: longer runs; smoke: seconds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds (init and data order), the same for every regime")
    parser.add_argument("--eval-mask-ratio", type=float, default=0.95,
                        help="MTD mask ratio at evaluation, common to all regimes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/few_to_many"),
                        help="shards and runs go here (data is reused between invocations)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default; 1 is faster on a busy machine)")
    parser.add_argument("--steps", type=int, default=0,
                        help="override the size's training steps (0: keep)")
    parser.add_argument("--regimes", nargs="+", default=[], metavar="IN-TGT@RATIO",
                        help="run only these regimes, e.g. 3-8@0.95 8-8@0.95 (default: all six)")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    return BenchConfig(size=args.size, seeds=tuple(args.seeds),
                       eval_mask_ratio=args.eval_mask_ratio, work=args.work,
                       data_seed=args.data_seed, device=args.device, threads=args.threads,
                       steps=args.steps, regimes=tuple(args.regimes), json_out=args.json)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--data", choices=("synthetic", "demo"), default="synthetic")
    known, rest = parser.parse_known_args(argv)
    if known.data == "synthetic":
        run(parse_args(rest))
        return 0
    demo = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--identities", type=int, default=96,
                      help="demo corpus identities (real people + variants of them)")
    demo.add_argument("--build", type=Path, help="an existing build folder to use instead")
    demo.add_argument("--size", choices=sorted(DEMO_SIZES), default="default")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    demo.add_argument("--work", type=Path, default=Path("/tmp/few_to_many"))
    demo.add_argument("--device", default="auto")
    demo.add_argument("--threads", type=int, default=0)
    demo.add_argument("--steps", type=int, default=0)
    demo.add_argument("--regimes", nargs="+", default=[], metavar="IN-TGT@RATIO")
    demo.add_argument("--json", type=Path)
    demo.add_argument("--holdout-shards", type=int, default=6,
                      help="training shards held out when the build's test split is empty")
    run_demo(demo.parse_args(rest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
