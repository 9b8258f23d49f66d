"""The API image (the Dockerfile's `api` target: pyproject's base dependencies, no extra) reads
every format the API accepts. Checked here by running the API's own checks in a child Python
that cannot import any package outside that set: a 16-bit mask once reached imagecodecs there,
which only the worker extra installs, and answered 500."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import tifffile
from packaging.markers import default_environment
from packaging.requirements import Requirement
from PIL import Image

from tests.utils import ROOT, clip_bytes, image_bytes
from tests.utils.hostile import sixteen_bit_mask

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def api_distributions() -> set[str]:
    """The base dependencies and everything they require (as installed here), normalized."""
    wanted = [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]
    found = {_normal(PYPROJECT["project"]["name"])}  # the project's own packages
    while wanted:
        requirement = wanted.pop()
        name = _normal(requirement.name)
        if name in found:
            continue
        found.add(name)
        for text in metadata.requires(requirement.name) or []:
            needed = Requirement(text)
            environment = {**default_environment(), "extra": ""}
            if needed.marker is None or needed.marker.evaluate(environment):
                wanted.append(needed)
        # The extras the base dependencies name themselves (celery[redis], ...).
        for extra in requirement.extras:
            for text in metadata.requires(requirement.name) or []:
                needed = Requirement(text)
                if needed.marker is not None and needed.marker.evaluate(
                    {**default_environment(), "extra": extra}
                ):
                    wanted.append(needed)
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def outside_modules() -> list[str]:
    """Top-level modules installed here whose every distribution is outside the API's set."""
    allowed = api_distributions()
    return sorted(
        module
        for module, dists in metadata.packages_distributions().items()
        if not any(_normal(d) in allowed for d in dists)
    )


# Run in the child: every import of a module outside the API's set fails, as in the API image.
CHECKS = """
import importlib.abc, json, sys
blocked = set(json.loads(sys.argv[1]))
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the API image)")
        return None
sys.meta_path.insert(0, Missing())
import api  # the application and everything it imports at start
from shared.controls import inspect_guide, inspect_mask
from shared.images import inspect_image
from shared.video import inspect_video
for path, kind in json.loads(sys.argv[2]):
    data = open(path, "rb").read()
    if kind == "image":
        inspect_image(data, 1 << 26)
        inspect_guide(data, 1 << 26)
    elif kind == "mask":
        inspect_mask(data, 1 << 26, Image.open(path).size)
    else:
        inspect_video(data, 1 << 26, 3000, 600.0)
print("read", len(json.loads(sys.argv[2])))
""".replace("import api", "from PIL import Image\nimport api")


def _encoded(pixels: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, metadata=None, **options)
    return buffer.getvalue()


def accepted_files() -> dict[str, tuple[bytes, str]]:
    """One file of each format and depth the API accepts, as image, mask or video."""
    ramp = np.tile(np.linspace(0, 65535, 48, dtype=np.uint16), (32, 1))
    rgb16 = np.repeat(ramp[..., None], 3, axis=2)
    png16 = io.BytesIO()
    import imagecodecs

    png16.write(imagecodecs.png_encode(rgb16))
    mpo = io.BytesIO()
    Image.new("RGB", (48, 32)).save(
        mpo, "MPO", save_all=True, append_images=[Image.new("RGB", (8, 8))]
    )
    return {
        "jpeg": (image_bytes((48, 32), "JPEG"), "image"),
        "png": (image_bytes((48, 32)), "image"),
        "webp": (image_bytes((48, 32), "WEBP"), "image"),
        "mpo": (mpo.getvalue(), "image"),
        "tiff": (image_bytes((48, 32), "TIFF"), "image"),
        "tiff-16-bit-deflate": (_encoded(rgb16, photometric="rgb", compression="zlib"), "image"),
        "tiff-16-bit-lzw": (_encoded(rgb16, photometric="rgb", compression="lzw"), "image"),
        "png-16-bit-rgb": (png16.getvalue(), "image"),
        "mask-16-bit-grey": (sixteen_bit_mask((48, 32)), "mask"),
        "mask-16-bit-rgb-png": (png16.getvalue(), "mask"),
        "mask-16-bit-grey-tiff": (
            _encoded(ramp, photometric="minisblack", compression="zlib"),
            "mask",
        ),
        "mask-8-bit-grey": (image_bytes((48, 32), mode="L"), "mask"),
        "mp4": (clip_bytes(), "video"),
        "webm": (clip_bytes(container="webm", codec="libvpx-vp9"), "video"),
    }


def test_the_api_image_installs_the_base_dependencies_alone() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    api_stage = dockerfile.split("AS api", 1)[1].split("FROM ", 1)[0]
    installs = re.findall(r"pip install (.*)", api_stage)
    assert installs == ["--no-cache-dir ."], installs


def test_the_api_reads_every_format_it_accepts_with_its_own_dependencies(tmp_path: Path) -> None:
    blocked = outside_modules()
    # The worker's libraries are outside it: the check below would notice a use of them.
    assert {"tensorflow", "keras", "cv2", "imagecodecs", "tifffile"} <= set(blocked)
    files = []
    for name, (data, kind) in accepted_files().items():
        path = tmp_path / name
        path.write_bytes(data)
        files.append((str(path), kind))
    done = subprocess.run(
        [sys.executable, "-c", CHECKS, json.dumps(blocked), json.dumps(files)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"read {len(files)}"
