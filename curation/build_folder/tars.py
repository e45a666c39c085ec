"""Reading shard tars as bytes (never extracted, never unpickled); a tar of an output on a
store is read from its object in ranges."""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from curation.build_folder.store import exists, open_binary


@dataclass
class TarMember:
    """One member of a shard tar: its name, whether it is a plain file, and its bytes (None for
    anything that is not a plain file)."""

    name: str
    is_file: bool
    data: bytes | None

    @property
    def key(self) -> str:
        return self.name.partition(".")[0]

    @property
    def ext(self) -> str:
        return self.name.partition(".")[2]


def iter_tar(tar: Path, wanted: Callable[[str], bool] | None = None,
             max_member_bytes: int | None = None,
             block_size: int | None = None) -> Iterator[TarMember]:
    """The members of a shard tar in order, bytes read only for plain files that `wanted`
    accepts (others come with data None). Raises tarfile.TarError / OSError on a broken tar and
    ValueError for a member over `max_member_bytes`. `block_size`: see `store.open_binary`."""
    with open_binary(tar, block_size) as raw, tarfile.open(fileobj=raw, mode="r:") as archive:
        for info in archive:
            data = None
            if info.isreg() and (wanted is None or wanted(info.name)):
                if max_member_bytes is not None and info.size > max_member_bytes:
                    raise ValueError(f"member {info.name} is {info.size} bytes, too large")
                handle = archive.extractfile(info)
                data = handle.read() if handle is not None else None
            yield TarMember(info.name, info.isreg(), data)


def read_samples(tar: Path, keys: set[str] | None = None) -> dict[str, list[tuple[str, bytes]]]:
    """{key: [(ext, bytes), ...]} in tar order for the wanted keys (all when None)."""
    samples: dict[str, list[tuple[str, bytes]]] = {}
    if not exists(tar):
        return samples
    for member in iter_tar(tar, None if keys is None else
                           (lambda name: name.partition(".")[0] in keys)):
        if member.data is not None:
            samples.setdefault(member.key, []).append((member.ext, member.data))
    return samples


def count_samples(tar: Path) -> int:
    if not exists(tar):
        return 0
    return len({m.key for m in iter_tar(tar, wanted=lambda _name: False)})
