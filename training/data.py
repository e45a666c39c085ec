"""WebDataset pipeline: MFHQ identity shards -> few-to-many training examples.

One sample (one identity, `mfhq_contract`) becomes one example:
    inputs  uint8 [n_in, 3, S, S]    the images the encoder sees
    targets uint8 [n_tgt, 3, T, T]   the images the decoders reconstruct (inputs may be among them);
                                     T = target_size (the paper preset: inputs at the backbone's
                                     224 px, targets at the build's 512 px crops)
    masks   uint8 [n_tgt, 1, T, T]   the targets' face masks (0/255)
    landmarks float32 [n_tgt, 5, 2]  the targets' five landmarks (eyes, nose, mouth corners) in
                                     [0, 1] crop coordinates (NaN where the record has none)
Batches stay uint8 until they reach the device (4x less to move between processes).

Only `.json`, `.jpg` and `.png` members are decoded, by our own functions; nothing is unpickled.
A corrupt member drops that view, a sample without enough good views is skipped, and an unreadable
shard is skipped; all three are counted (`DataStats`) and never stop training.

Training streams are resampled, split by node (rank) and by DataLoader worker, shuffled, sized
with `with_epoch`, and fully determined by (seed, epoch, rank, stream): each batch carries the
raw position its stream reached, so a resumed run skips exactly the samples already consumed
and continues with the same batches as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from mfhq_contract import IMAGES_PER_IDENTITY, JSON_EXT, image_ext, mask_ext
from training import storage
from training.config import DataConfig
from training.errors import InputError

STATS_FIELDS = ("samples_ok", "samples_skipped", "members_skipped", "shards_failed")
BATCH_TENSORS = ("inputs", "targets", "masks", "landmarks")


@dataclass
class DataStats:
    samples_ok: int = 0
    samples_skipped: int = 0
    members_skipped: int = 0
    shards_failed: int = 0

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([getattr(self, f) for f in STATS_FIELDS], dtype=torch.int64)


def stable_seed(*parts: object) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class ShardsNotFoundError(InputError):
    pass


class NotAShardError(InputError):
    pass


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace patterns and '::'-joined lists -> a list of shard URLs (paths, file:, http, pipe:,
    and object-store URLs such as s3:// and gs://, which are read through fsspec)."""
    storage.register_webdataset_schemes()
    if isinstance(urls, str):
        urls = [urls]
    out: list[str] = []
    for spec in urls:
        out.extend(wds.shardlists.expand_urls(spec))
    if not out:
        raise ShardsNotFoundError(f"no shards in {urls!r}: give shard paths or URLs, e.g. "
                                  f"'shards/train/mfhq-train-{{000000..000009}}.tar'")
    return out


TAR_MAGIC_OFFSET = 257  # "ustar" in the first header block of a POSIX tar


def check_shards(spec: str, flag: str = "--shards") -> list[str]:
    """The shard URLs of `spec`, checked before training or evaluation starts: at least one of
    them exists (local paths and object-store URLs; `pipe:` and http(s) are not probed) and the
    first that exists is a tar file. Raises a one-line `InputError` naming the input."""
    urls = expand_urls(spec)
    probed = [u for u in urls if not u.startswith(("pipe:", "http://", "https://"))]
    if not probed:
        return urls
    # locally every file is checked (cheap); on a store the first and last, not one HEAD each
    candidates = probed if not storage.is_url(probed[0]) else list(dict.fromkeys(
        [probed[0], probed[-1]]))
    present = [u for u in candidates if storage.exists(u)]
    if not present:
        shown = probed[0] if len(probed) == 1 else f"{probed[0]} ... {probed[-1]}"
        raise ShardsNotFoundError(
            f"{flag} {spec!r} matches no file ({len(probed)} URL(s), none exists: {shown}); "
            f"check the path or brace pattern (the build writes shards/<split>/"
            f"mfhq-<split>-NNNNNN.tar)")
    first = present[0]
    head = storage.read_head(first, TAR_MAGIC_OFFSET + 5)
    if head[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + 5] != b"ustar":
        raise NotAShardError(
            f"{first} (from {flag}) is not a shard: not a tar file. Give the .tar files a "
            f"build wrote (shards/<split>/mfhq-<split>-NNNNNN.tar)")
    return urls


def decode_rgb(data: bytes, size: int) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 [3, size, size]."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when much larger
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def decode_mask(data: bytes, size: int) -> np.ndarray:
    """PNG mask bytes -> uint8 [1, size, size] with values 0/255."""
    image = Image.open(io.BytesIO(data)).convert("L")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.where(np.asarray(image) >= 128, 255, 0).astype(np.uint8)[None]


@dataclass
class Identity:
    key: str
    record: dict
    images: list[np.ndarray]           # at the input size
    masks: list[np.ndarray]            # at the target size
    url: str
    targets: list[np.ndarray]          # at the target size (the same arrays when sizes agree)
    landmarks: list[np.ndarray]        # [5, 2] in [0, 1] crop coordinates, NaN when unknown


NUM_LANDMARKS = 5


def record_landmarks(record: dict, index: int) -> np.ndarray:
    """Image `index`'s five landmarks from the sample record, in [0, 1] crop coordinates."""
    try:
        entry = next(e for e in record["images"] if e.get("index") == index)
        points = np.asarray(entry["landmarks5"], dtype=np.float32).reshape(NUM_LANDMARKS, 2)
        return points / float(record["crop_size"])
    except Exception:  # an older or partial record: the view stays usable, without a pose map
        return np.full((NUM_LANDMARKS, 2), np.nan, np.float32)


def decode_identity(sample: dict, size: int, stats: DataStats,
                    target_size: int | None = None) -> Identity | None:
    """Decode one raw WebDataset sample; None (and counted) when it is unusable."""
    target_size = target_size or size
    try:
        record = json.loads(sample[JSON_EXT])
        if not isinstance(record, dict):
            raise ValueError("record is not an object")
    except Exception:
        stats.samples_skipped += 1
        return None
    images, targets, masks, landmarks = [], [], [], []
    for index in range(IMAGES_PER_IDENTITY):
        image_bytes, mask_bytes = sample.get(image_ext(index)), sample.get(mask_ext(index))
        if image_bytes is None or mask_bytes is None:
            continue
        try:
            image = decode_rgb(image_bytes, size)
            target = image if target_size == size else decode_rgb(image_bytes, target_size)
            mask = decode_mask(mask_bytes, target_size)
        except Exception:
            stats.members_skipped += 1
            continue
        images.append(image)
        targets.append(target)
        masks.append(mask)
        landmarks.append(record_landmarks(record, index))
    return Identity(sample.get("__key__", ""), record, images, masks, sample.get("__url__", ""),
                    targets, landmarks)


def few_to_many(identity: Identity, n_in: int, n_tgt: int,
                rng: random.Random) -> dict[str, np.ndarray]:
    """Pick n_in input views and n_tgt target views (drawn from all views, inputs included)."""
    views = list(range(len(identity.images)))
    inputs = rng.sample(views, n_in)
    if n_tgt <= len(views):
        targets = rng.sample(views, n_tgt)
    else:  # fewer good views than targets: repeat some rather than lose the identity
        targets = views + [rng.choice(views) for _ in range(n_tgt - len(views))]
    return {
        "inputs": np.stack([identity.images[i] for i in inputs]),
        "targets": np.stack([identity.targets[i] for i in targets]),
        "masks": np.stack([identity.masks[i] for i in targets]),
        "landmarks": np.stack([identity.landmarks[i] for i in targets]),
    }


def unseen_view(identity: Identity, n_in: int, rng: random.Random) -> dict[str, np.ndarray]:
    """Evaluation example: n_in inputs and one target view that is never among them.

    The views are put in one random order per identity (`rng` must depend on the identity only,
    not on n_in): inputs are the first n_in views, the target is the last. So the inputs for a
    smaller n_in are a subset of those for a larger one, and every n_in is scored on the same
    unseen view - the error curve over n_in measures what more inputs add, not a change of
    targets, and the encoder can never be scored on copying an input.
    """
    order = list(range(len(identity.images)))
    rng.shuffle(order)
    if n_in >= len(order):
        raise ValueError(f"{len(order)} views leave no unseen target for {n_in} inputs")
    target = order[-1]
    return {
        "inputs": np.stack([identity.images[i] for i in order[:n_in]]),
        "targets": identity.targets[target][None],
        "masks": identity.masks[target][None],
        "landmarks": identity.landmarks[target][None],
    }


def collate(examples: list[dict]) -> dict:
    batch = {k: torch.from_numpy(np.stack([e[k] for e in examples]))
             for k in BATCH_TENSORS}
    batch["keys"] = [e["key"] for e in examples]
    batch["urls"] = [e["url"] for e in examples]
    batch["stream"] = examples[-1]["stream"]
    batch["position"] = examples[-1]["position"]
    batch["stats"] = examples[-1]["stats"].as_tensor()
    return batch


class CountingHandler:
    """WebDataset exception handler: count the unreadable shard/member and go on."""

    def __init__(self, stats: DataStats):
        self.stats = stats

    give_up_after = 50  # failures before any good sample: the URLs are wrong, stop the stream

    def __call__(self, exn: Exception) -> bool:
        self.stats.shards_failed += 1
        return self.stats.samples_ok > 0 or self.stats.shards_failed < self.give_up_after


def _worker_info() -> tuple[int, int, int, int]:
    return wds.utils.pytorch_worker_info()


class IdentityStream(IterableDataset):
    """Training stream of few-to-many batches (resampled, infinite within `with_epoch`)."""

    def __init__(self, urls: str | list[str], config: DataConfig, batch_size: int, seed: int):
        super().__init__()
        self.urls = expand_urls(urls)
        self.config = config
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.resume_positions: list[int] = []  # raw samples already consumed, per stream
        self.resume_batches = 0                # batches of this epoch already consumed (all)

    def num_streams(self) -> int:
        return max(1, self.config.workers)

    def batches_per_stream(self) -> int:
        _, world, _, _ = _worker_info()
        per_rank = math.ceil(self.config.samples_per_epoch / self.batch_size)
        return max(1, math.ceil(per_rank / self.num_streams()))

    def batches_per_epoch(self) -> int:
        return self.batches_per_stream() * self.num_streams()

    def set_epoch(self, epoch: int, positions: list[int] | None = None, batches: int = 0) -> None:
        self.epoch = epoch
        self.resume_positions = list(positions or [])
        self.resume_batches = batches

    def stream_shards(self, rank: int, world: int, stream: int) -> list[str]:
        node = list(wds.split_by_node(self.urls))
        if not node:  # fewer shards than ranks: ranks share shards rather than starve
            node = self.urls
        mine = node[stream::self.num_streams()]
        return mine or node

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, num_workers = _worker_info()
        streams = self.num_streams()
        # The loader asks worker 0 first; rotating keeps stream order identical after a resume.
        stream = (worker + self.resume_batches) % streams
        done_batches = sum(1 for j in range(self.resume_batches) if j % streams == stream)
        skip = self.resume_positions[stream] if stream < len(self.resume_positions) else 0
        remaining = self.batches_per_stream() - done_batches
        if remaining <= 0:
            return
        stats = DataStats()
        base = (self.seed, self.epoch, rank, stream)
        shards = wds.ResampledShards(self.stream_shards(rank, world, stream),
                                     seed=stable_seed("shards", *base), worker_seed=lambda: 0,
                                     deterministic=True)
        config = self.config

        def examples(samples: Iterator[dict]) -> Iterator[dict]:
            for position, sample in enumerate(samples, start=1):
                if position <= skip:  # consumed before the resume: skipped undecoded
                    continue
                identity = decode_identity(sample, config.image_size, stats, config.target_px)
                if identity is None or len(identity.images) < config.n_in:
                    if identity is not None:
                        stats.samples_skipped += 1
                    continue
                stats.samples_ok += 1
                rng = random.Random(stable_seed("views", *base, position))
                example = few_to_many(identity, config.n_in, config.n_tgt, rng)
                example.update(key=identity.key, url=identity.url, stream=stream,
                               position=position, stats=stats)
                yield example

        pipeline = wds.DataPipeline(
            shards,
            wds.tarfile_to_samples(handler=CountingHandler(stats)),
            wds.shuffle(config.shuffle_buffer, initial=config.shuffle_buffer,
                        rng=random.Random(stable_seed("shuffle", *base))),
            examples,
            wds.batched(self.batch_size, collation_fn=collate, partial=False),
        ).with_epoch(remaining)
        yield from pipeline


class EvalStream(IterableDataset):
    """One deterministic pass over test shards (not resampled, not shuffled), yielding
    `unseen_view` examples: n_in inputs and one target view that is not an input."""

    def __init__(self, urls: str | list[str], config: DataConfig, batch_size: int,
                 n_in: int | None = None, max_samples: int | None = None, seed: int = 0):
        super().__init__()
        self.urls = expand_urls(urls)
        self.config = config
        self.batch_size = batch_size
        self.n_in = n_in or config.n_in
        self.max_samples = max_samples
        self.seed = seed
        self.stats = DataStats()

    def __iter__(self) -> Iterator[dict]:
        stats = DataStats()
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self.urls),
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=CountingHandler(stats)),
        )
        pending: list[dict] = []
        count = 0
        for sample in pipeline:
            if self.max_samples is not None and count >= self.max_samples:
                break
            identity = decode_identity(sample, self.config.image_size, stats,
                                       self.config.target_px)
            if identity is None or len(identity.images) <= self.n_in:
                if identity is not None:
                    stats.samples_skipped += 1
                continue
            stats.samples_ok += 1
            count += 1
            rng = random.Random(stable_seed("eval", self.seed, identity.key))
            example = unseen_view(identity, self.n_in, rng)
            example.update(key=identity.key, url=identity.url, stream=0, position=count,
                           stats=stats)
            pending.append(example)
            if len(pending) == self.batch_size:
                yield collate(pending)
                pending = []
        if pending:
            yield collate(pending)
        self.stats = stats
