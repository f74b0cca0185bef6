"""The benchmark's images, built locally and pushed to a Debian docker-registry on 127.0.0.1.

- busybox: the pods' image (busybox-static rootfs);
- pause: containerd's sandbox image, /usr/bin/catatonit (static) run as `/catatonit -P`;
- big / big-shared: ~300 MB of random (incompressible) files over several layers; big-shared repeats all of big's
  layers but the last and adds one of its own, so pulling it after big fetches only that layer;
- files / files-shared: busybox plus one layer of 20k+ small random files; files-shared has another 20k-file layer
  on the same busybox base.

Random data makes the sizes real (gzip cannot shrink it). Everything is deterministic per run only in shape, not
in content: each run gets fresh bytes, so no runtime can keep a warm copy from an earlier run.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.support.images import BuiltImage, LayerBuilder, Layer, build_image, busybox_layer
from tests.support.registry import Registry

CATATONIT_PATH = Path("/usr/bin/catatonit")
REPO_PREFIX = "bench"


@dataclass(frozen=True)
class ImageSizes:
    """How big the generated images are; `quick` keeps CI smoke runs small."""

    big_layers: int
    big_layer_bytes: int
    big_files_per_layer: int
    small_files: int
    small_file_max_bytes: int

    @classmethod
    def for_mode(cls, quick: bool) -> ImageSizes:
        if quick:
            return cls(big_layers=3, big_layer_bytes=4 << 20, big_files_per_layer=2, small_files=2000,
                       small_file_max_bytes=2048)
        return cls(big_layers=5, big_layer_bytes=60 << 20, big_files_per_layer=6, small_files=20_000,
                   small_file_max_bytes=2048)


@dataclass
class PulledImage:
    """An image as the scenarios know it: where to pull it and how many compressed bytes it ships."""

    name: str
    ref: str
    image: BuiltImage
    label: str = ""

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.image.layers]

    @property
    def total_bytes(self) -> int:
        return sum(layer.size for layer in self.image.layers) + len(self.image.config_bytes)

    def bytes_missing_after(self, present: PulledImage | None) -> int:
        """Compressed bytes a pull must fetch when `present`'s layers are already there."""
        have = set(present.layer_digests) if present else set()
        return sum(layer.size for layer in self.image.layers if layer.digest not in have) + \
            len(self.image.config_bytes)


@dataclass
class BenchImages:
    busybox: PulledImage
    pause: PulledImage
    big: PulledImage
    big_shared: PulledImage
    files: PulledImage
    files_shared: PulledImage

    def all(self) -> list[PulledImage]:
        return [self.busybox, self.pause, self.big, self.big_shared, self.files, self.files_shared]


def random_files_layer(rng: random.Random, prefix: str, files: int, total_bytes: int) -> Layer:
    """A layer of `files` files of random bytes adding up to `total_bytes`, under /data/<prefix>/."""
    builder = LayerBuilder().add_dir("data").add_dir(f"data/{prefix}")
    each = total_bytes // files
    for index in range(files):
        builder.add_file(f"data/{prefix}/blob{index:03d}.bin", rng.randbytes(each))
    return builder.layer()


def small_files_layer(rng: random.Random, prefix: str, files: int, max_bytes: int) -> Layer:
    """`files` small random files, 100 per directory, like a language runtime's library tree."""
    builder = LayerBuilder().add_dir("lib").add_dir(f"lib/{prefix}")
    for index in range(files):
        directory = f"lib/{prefix}/d{index // 100:04d}"
        if index % 100 == 0:
            builder.add_dir(directory)
        builder.add_file(f"{directory}/f{index:05d}.py", rng.randbytes(rng.randint(16, max_bytes)))
    return builder.layer()


def pause_image() -> BuiltImage:
    layer = LayerBuilder().add_file("catatonit", CATATONIT_PATH.read_bytes(), mode=0o755).layer()
    return build_image([layer], config={"Entrypoint": ["/catatonit", "-P"], "Cmd": [], "Env": ["PATH=/"]})


def build_images(sizes: ImageSizes, seed: int | None = None) -> dict[str, BuiltImage]:
    """Every bench image by short name. Compression (the slow part) runs in threads: zlib releases the GIL."""
    rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
    base = busybox_layer()
    big_layers = [random_files_layer(rng, f"big{i}", sizes.big_files_per_layer, sizes.big_layer_bytes)
                  for i in range(sizes.big_layers)]
    own_layer = random_files_layer(rng, "shared-own", sizes.big_files_per_layer, sizes.big_layer_bytes)
    files_a = small_files_layer(rng, "a", sizes.small_files, sizes.small_file_max_bytes)
    files_b = small_files_layer(rng, "b", sizes.small_files, sizes.small_file_max_bytes)
    layers = [base, *big_layers, own_layer, files_a, files_b]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda layer: layer.digest, layers))  # computes blob and digest once per layer
    sleep_cmd = {"Cmd": ["sleep", "3600"]}
    return {
        "busybox": build_image([base]),
        "pause": pause_image(),
        "big": build_image([base, *big_layers], config=sleep_cmd),
        "big-shared": build_image([base, *big_layers[:-1], own_layer], config=sleep_cmd),
        "files": build_image([base, files_a], config=sleep_cmd),
        "files-shared": build_image([base, files_b], config=sleep_cmd),
    }


def image_labels(sizes: ImageSizes) -> dict[str, str]:
    big_mb = sizes.big_layers * sizes.big_layer_bytes / 1_000_000
    return {"big": f"{big_mb:.0f} MB image, {sizes.big_layers + 1} layers",
            "files": f"{sizes.small_files // 1000}k-file image"}


def push_images(registry: Registry, images: dict[str, BuiltImage], sizes: ImageSizes) -> BenchImages:
    labels = image_labels(sizes)
    pushed = {name: PulledImage(name, registry.push_image(f"{REPO_PREFIX}/{name}", "latest", image), image,
                                labels.get(name.split("-")[0], name))
              for name, image in images.items()}
    return BenchImages(busybox=pushed["busybox"], pause=pushed["pause"], big=pushed["big"],
                       big_shared=pushed["big-shared"], files=pushed["files"], files_shared=pushed["files-shared"])
