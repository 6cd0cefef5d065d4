"""The `--decoder` choice for plain JPEG/PNG tiles: Pillow one at a time, or nvImageCodec a batch at a time.

`pillow-draft` is Pillow with libjpeg's DCT scaling (Pillow's `Image.draft`): a JPEG larger than the model
input is decoded at 1/2, 1/4 or 1/8 scale, never below the model size, and then resized as usual. Decoding
and resizing then cost a fraction (a 256 px JPEG for a 64 px model: about a quarter of the CPU time), but
the pixels are not those of a full decode: libjpeg's scaled IDCT averages where the bilinear resize
weighs a triangle (about 0.6 grey levels apart on average, up to a few levels). An option, not a default:
a bundle's checks and rsz-bench accuracy use full decodes. Each tile's rule says at which scale it was read.

nvImageCodec decodes on the GPU (nvJPEG) when the engine runs there, else with its CPU backend
(libjpeg-turbo, libpng). Only the files whose pixels and RGB rule it is known to reproduce go to it:
8-bit (or less) JPEG/PNG, RGB or grey. Everything else (GeoTIFF scenes and TIFFs, 16-bit, palette, alpha or
a transparent colour, CMYK, and any file it fails on) is decoded by `images.decode_tile`, tile by tile, so
every problem keeps its exact one-line message and a bad file never costs the good tiles of its batch.

Both decoders return, per tile, `(HxWx3 uint8 RGB, rule)` or the TileError that skips it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rsz_infer.errors import RszError
from rsz_infer.images import (
    TIFF_EXTENSIONS,
    Tile,
    TileError,
    TileOptions,
    check_size,
    decode_tile,
    too_many_pixels,
)

DECODERS = ("auto", "pillow", "pillow-draft", "nvimgcodec")
Decoded = tuple[np.ndarray, str] | TileError
INSTALL_HINT = "pip install 'rsz[gpu-decode]'"


def decode_tile_reader(tile: Tile) -> tuple[str, str]:
    """(library, input kind) of what images.decode_tile uses for this tile, for the summary line."""
    tiff = Path(tile.path).suffix.lower() in TIFF_EXTENSIONS
    if tile.window is not None:
        return "rasterio", "GeoTIFF windows" if tiff else "raster windows"
    if tile.reader == "gdal":
        return "rasterio", "TIFF" if tiff else "GDAL rasters"
    return "pillow", "JPEG/PNG"


def _decode_or_error(
    tile: Tile, options: TileOptions, ran: set[tuple[str, str]], jpeg_draft: int = 0
) -> Decoded:
    try:
        decoded = decode_tile(tile, options, jpeg_draft)
    except TileError as err:
        return err
    library, kind = decode_tile_reader(tile)
    if jpeg_draft and library == "pillow":
        library = "pillow-draft"
    ran.add((library, kind))  # set.add is atomic: the pool's threads share the set
    return decoded


class PillowDecoder:
    """images.decode_tile per tile; the pipeline runs one tile per pool task (Pillow releases the GIL)."""

    batched = False  # the pipeline hands it one tile per call

    def __init__(self, jpeg_draft: int = 0) -> None:
        """jpeg_draft: the model input size for `pillow-draft` (JPEGs decoded at the smallest DCT scale
        whose sides are still at least this); 0: full decodes."""
        self.jpeg_draft = jpeg_draft
        self.name = "pillow-draft" if jpeg_draft else "pillow"
        self.ran: set[tuple[str, str]] = set()  # (library, input kind) of the tiles decoded so far

    def decode(self, tiles: list[Tile], options: TileOptions) -> list[Decoded]:
        return [_decode_or_error(t, options, self.ran, self.jpeg_draft) for t in tiles]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (C libraries write there directly). Only used before the decode threads start."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@functools.lru_cache(maxsize=1)
def _nvimgcodec():
    """The nvimgcodec module, or None when it is not installed.

    Its import prints "Failed to load nvjpeg/nvtiff ..." for every optional codec library it does not find
    (all of them on a CPU-only machine): not rsz errors, so hidden. Verbosity 0 keeps its per-file parser
    messages quiet too; a file it cannot decode falls back to Pillow, which says what is wrong.
    """
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")
    try:
        with _quiet_stderr():
            from nvidia import nvimgcodec
    except ImportError:
        return None
    return nvimgcodec


class NvImageCodecDecoder:
    """nvImageCodec batch decode of a chunk of tiles; Pillow for the tiles it does not take."""

    batched = True  # the pipeline hands it a batch of tiles per call

    def __init__(self, device: str) -> None:
        nv = _nvimgcodec()
        if nv is None:
            raise RszError(f"--decoder nvimgcodec: nvImageCodec is not installed ({INSTALL_HINT})")
        self.nv = nv
        try:
            with _quiet_stderr():
                if device == "cuda":
                    # fancy upsampling: chroma upsampled as libjpeg-turbo (Pillow) does by default
                    self.decoder = nv.Decoder(device_id=0, options=":fancy_upsampling=1")
                else:
                    self.decoder = nv.Decoder(
                        device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY,
                        backends=[nv.Backend(nv.BackendKind.CPU_ONLY)],
                    )
        except RuntimeError as err:
            raise RszError(f"--decoder nvimgcodec: cannot start it on {device} ({err})") from None
        self.name = f"nvimgcodec:{device}"
        # Pillow's rules: no EXIF rotation, RGB out (grey repeated to 3 channels), 8 bits
        self.params = nv.DecodeParams(
            apply_exif_orientation=False,
            color_spec=nv.ColorSpec.SRGB,
            allow_any_depth=False,
            sample_format=nv.SampleFormat.I_RGB,
        )
        # (channels, colour space) of the code stream -> the rule decode_tile writes for such a file
        self.rules = {
            (3, nv.ColorSpec.SYCC): "rgb",
            (3, nv.ColorSpec.SRGB): "rgb",
            (1, nv.ColorSpec.GRAY): "grey to rgb",
        }
        self.lock = threading.Lock()  # one batch at a time: the decoder has its own worker threads
        self.ran: set[tuple[str, str]] = set()  # (library, input kind) of the tiles decoded so far

    def _stream(self, tile: Tile, options: TileOptions) -> tuple[object, str] | None:
        """(code stream, rule) when nvImageCodec takes this tile, else None.

        A stream whose header declares more than --max-pixels is never decoded here: decode_tile refuses
        it with the same reason as for Pillow.
        """
        if tile.problem or tile.window is not None or tile.reader != "pillow":
            return None
        try:
            with open(tile.path, "rb") as f:
                data = f.read()
            stream = self.nv.CodeStream(data)
            if stream.codec_name not in ("jpeg", "png") or stream.precision > 8:
                return None
            if stream.codec_name == "png" and b"tRNS" in data[: data.find(b"IDAT")]:
                return None  # a transparent colour: decode_tile skips a tile that is transparent everywhere
            if too_many_pixels(stream.width, stream.height, options):
                return None
            rule = self.rules.get((stream.num_channels, stream.color_spec))
        except Exception:  # unreadable, not an image, or a stream it rejects: decode_tile says which
            return None
        return (stream, rule) if rule else None

    def decode(self, tiles: list[Tile], options: TileOptions) -> list[Decoded]:
        results: list[Decoded | None] = [None] * len(tiles)
        todo = [
            (i, s) for i, s in ((i, self._stream(t, options)) for i, t in enumerate(tiles)) if s is not None
        ]
        if todo:
            try:
                with self.lock:
                    images = self.decoder.decode([s for _, (s, _) in todo], params=self.params)
            except Exception:  # the whole call failed: every tile of it goes to decode_tile
                images = [None] * len(todo)
            for (i, (_, rule)), image in zip(todo, images):
                if image is None:  # failed (e.g. truncated): decode_tile gives the reason
                    continue
                try:
                    results[i] = (check_size(np.asarray(image.cpu()), options), rule)
                    self.ran.add((self.name, "JPEG/PNG"))
                except TileError as err:
                    results[i] = err
        return [
            r if r is not None else _decode_or_error(t, options, self.ran) for r, t in zip(results, tiles)
        ]


def open_decoder(
    choice: str, device: str, notes: list[str] | None = None, model_size: int = 0
) -> PillowDecoder | NvImageCodecDecoder:
    """The `--decoder` choice; `device` is the resolved engine device (cuda or cpu).

    `auto` takes nvImageCodec whenever it is installed, on the GPU when the engine runs there. On the CPU
    too: its libjpeg-turbo/libpng batches measured 1.3-1.5x Pillow's throughput through the labeling loop
    (2 cores, 256 px JPEG tiles), with the same pixels. Without it, Pillow.
    """
    if choice not in DECODERS:
        raise RszError(f"--decoder {choice}: expected one of {', '.join(DECODERS)}")
    if choice == "nvimgcodec":
        return NvImageCodecDecoder(device)
    if choice == "pillow-draft":
        if model_size < 1:
            raise RszError("--decoder pillow-draft: needs the model input size")
        return PillowDecoder(jpeg_draft=model_size)
    if choice == "auto" and _nvimgcodec() is not None:
        try:
            return NvImageCodecDecoder(device)
        except RszError as err:
            if notes is not None:
                notes.append(f"{err}; decoding with Pillow")
    elif choice == "auto" and device == "cuda" and notes is not None:
        notes.append(f"--decoder auto: nvImageCodec not installed, decoding with Pillow ({INSTALL_HINT})")
    return PillowDecoder()
