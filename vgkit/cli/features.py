"""``vgkit features``: the frozen-feature cache from the command line."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from vgkit.cli.common import console, styled, user_errors
from vgkit.errors import VgkitError

app = typer.Typer(help="Extract and inspect frozen-backbone feature caches.", no_args_is_help=True)


@app.command("extract")
@user_errors
def extract(
    dataset: str = typer.Option("synthetic", help="Registered dataset name."),
    root: Path = typer.Option(None, help="Dataset directory (default data/<dataset>)."),
    backbone: str = typer.Option(..., help="A registered backbone (see vgkit plugins)."),
    weights: Path = typer.Option(None, help="Local weights file of the backbone."),
    image_size: int = typer.Option(224, min=1, help="Square network input size in pixels."),
    resize: str = typer.Option("stretch", help="stretch (to the square, ignoring aspect) or letterbox."),
    out: Path = typer.Option(None, help="Cache directory (default <root>/features/<model>-<key>)."),
    batch_size: int = typer.Option(32, min=1),
    workers: int = typer.Option(2, min=0, help="DataLoader worker processes."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
) -> None:
    """Run a frozen backbone once over every image of a dataset into an fp16 memory-mapped cache."""
    from vgkit.data.features import FeatureCache, extract_features, image_table
    from vgkit.data.images import ImageTransform
    from vgkit.distributed import device_for, init_distributed
    from vgkit.plugins import get_registry

    if resize not in ("stretch", "letterbox"):
        raise VgkitError(f"--resize {resize!r}: expected stretch or letterbox")
    info = init_distributed()
    registry = get_registry()
    root = root or Path("data") / dataset
    index = registry.build("dataset", dataset, {}, root=root)
    bb = registry.build("backbone", backbone, {"weights": str(weights) if weights else None})
    if not bb.frozen:
        raise VgkitError(f"backbone {backbone!r} is trainable: only frozen backbones are cached")
    if image_size % bb.stride or image_size < bb.stride:
        raise VgkitError(f"--image-size {image_size}: not a positive multiple of {backbone}'s "
                         f"stride {bb.stride}")
    transform = ImageTransform((image_size, image_size), resize)  # type: ignore[arg-type]
    dev = device_for(info, device)
    n = len(image_table(index))
    if info.is_main:
        console.print(f"{dataset}: {n:,} images -> {backbone} on {dev} "
                      f"({image_size}x{image_size}, {resize})")
    t0 = time.perf_counter()
    path = extract_features(bb, transform, index, root, out, batch_size=batch_size,
                            workers=workers, device=dev, dist_info=info)
    if info.is_main:
        cache = FeatureCache.open(path)
        secs = time.perf_counter() - t0
        console.print(styled("cache complete", "green", f": {path}  {tuple(cache.features.shape)} float16, "
                      f"{cache.features.nbytes / 2**20:,.0f} MiB, {secs:.1f}s"))
        if cache.bad:
            console.print(styled(f"{len(cache.bad)} unreadable images", "yellow", " stored as zeros and "
                          f"skipped in training: {', '.join(sorted(cache.bad)[:5])}"))


@app.command("info")
@user_errors
def info_cmd(directory: Path = typer.Argument(..., help="A cache directory.")) -> None:
    """Print a cache's manifest summary (or say that it is unfinished)."""
    from vgkit.data.features import FeatureCache

    cache = FeatureCache.open(directory)
    spec = cache.manifest["spec"]
    console.print(f"{directory}: {len(cache):,} images of {spec['dataset']!r}, maps "
                  f"{spec['shape']} {spec['dtype']}, backbone {spec['backbone']}, "
                  f"transform {spec['transform']['mode']} {spec['transform']['size']}, "
                  f"{len(cache.bad)} bad images, created {cache.manifest.get('created')}")
