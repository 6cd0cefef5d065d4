"""Tile discovery and decoding: every input becomes `Tile`s, every Tile decodes to HxWx3 uint8 RGB.

Inputs are folders (searched recursively), files, GDAL virtual paths and URLs (/vsizip/, /vsicurl/, s3://
... handed to GDAL untouched) and STAC JSON (rsz_infer.stac). A file is a raster when GDAL opens it (VRT,
JP2, COG, NITF ...), not by its suffix; JPEG/PNG tiles no larger than the tile size are decoded by Pillow.
Any raster larger than the tile size is a scene, georeferenced or not: it is cut into windows read one at
a time (never the whole scene into memory); windows that are all nodata are skipped. Windows of a scene
with a CRS carry EPSG:4326 footprints; without one, the window is the (pixel) footprint. Files GDAL cannot
open inside a folder are ignored; a bad file never stops the others (its Tile carries the problem,
decoding raises).

How the pixels became RGB (band choice, greyscale, 16-bit stretch) is a short "rule" string that goes into
every output row.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from rsz_infer.errors import RszError, first_line

PILLOW_EXTENSIONS = (".jpg", ".jpeg", ".png")
TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = PILLOW_EXTENSIONS + TIFF_EXTENSIONS
# Suffixes that say a file in a folder is meant as imagery even when GDAL cannot be asked (a non-UTF-8 name)
RASTER_SUFFIXES = IMAGE_EXTENSIONS + (".jp2", ".vrt", ".img", ".ntf", ".webp", ".gif", ".bmp")
# The files of a folder that rsz-train and rsz-export read as one image each (Pillow reads them too, so the
# training loader decodes them as rsz-infer does); the rest of RASTER_SUFFIXES are GDAL-only formats (a .vrt
# names other files), which those folders leave out with one note
IMAGE_FILE_SUFFIXES = IMAGE_EXTENSIONS + (".jp2", ".webp", ".gif", ".bmp")
GDAL_ONLY_SUFFIXES = tuple(s for s in RASTER_SUFFIXES if s not in IMAGE_FILE_SUFFIXES)
# A STAC item's red, green and blue band assets read as one raster (rsz_infer.stac): its tile path and id
RGB_STACK_PREFIX = "STAC_RGB:"
NOT_UTF8_NAME = "file name is not valid UTF-8, which GDAL cannot open (rename the file)"
# The skip reason of a raster with fewer bands than --bands names; it starts with no "-", which CSV outputs
# would neutralise as a spreadsheet formula ("'--bands ...")
_TOO_FEW_BANDS = re.compile(r"the file has only \d+ bands for --bands [\d,]+")
MIN_TILE_PX = 8  # smaller images carry too little to label; the model input is upsampled from them
STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_RULE = f"stretch p{STRETCH_PERCENTILES[0]:g}-{STRETCH_PERCENTILES[1]:g}"
OVERVIEW_MAX_SIDE = 1024  # side of the decimated read that scene-level percentiles come from
DECIMATED_READ_MAX_PIXELS = 4096 * 4096  # above this, without overviews, sample windows instead
SAMPLE_GRID, SAMPLE_WINDOW_PX = 16, 64  # 16 x 16 windows of 64 px spread over the scene
OPEN_SCENES_PER_THREAD = 4
# --max-pixels: the most pixels rsz decodes in one piece, checked on the size a file's header declares before
# any decoding. 100 megapixels is a 10000 x 10000 orthophoto (300 MB as 8-bit RGB, 1.2 GB through the
# float32 stretch of 16-bit data). Rasters GDAL reads window by window (tiled GeoTIFF/COG, JP2, VRT ...)
# decode the blocks under a window only, so their declared size is not limited, their block size is (a
# single-strip TIFF is one block); JPEG and PNG have no random access (a window decodes every line above it,
# and GDAL caches those lines), so they count whole.
DEFAULT_MAX_PIXELS = 100_000_000
SEQUENTIAL_DRIVERS = ("PNG", "JPEG")  # GDAL drivers that decode from the top of the file for any window
# GDAL's block cache defaults to 5% of RAM and fills up on a long scene; windows are read row by row, so a
# row of blocks is all it needs to reuse (300 MB at 512 px blocks across 200,000 px). The user's own
# GDAL_CACHEMAX wins.
os.environ.setdefault("GDAL_CACHEMAX", "256")


class TileError(Exception):
    """This tile cannot be labeled (corrupt, too small, ...); the message is the reason."""


class NodataTile(TileError):
    """A scene window with no valid pixels: skipped quietly, not an error."""


@dataclass(frozen=True)
class TileOptions:
    tile_size: int = 256
    overlap: int = 0
    bands: tuple[int, ...] | None = None  # 1-based band indices for RGB from multi-band TIFFs
    min_size: int = MIN_TILE_PX
    asset: str | None = None  # STAC inputs: the asset key to label (None: the visual / RGB asset)
    # metres per pixel the model should see (rsz-infer --gsd): scene windows are resampled to it; None: as is
    gsd: float | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS  # see DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise RszError(f"--max-pixels {self.max_pixels}: must be at least 1")
        if self.tile_size * self.tile_size > self.max_pixels:
            raise RszError(
                f"--tile-size {self.tile_size}: a window of {self.tile_size}x{self.tile_size} px is more "
                f"than --max-pixels {self.max_pixels:,}"
            )
        if self.tile_size < self.min_size:
            raise RszError(f"--tile-size {self.tile_size}: must be at least {self.min_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise RszError(f"--overlap {self.overlap}: must be >= 0 and smaller than --tile-size")
        if self.bands is not None and (len(self.bands) not in (1, 3) or min(self.bands) < 1):
            given = ",".join(map(str, self.bands))
            raise RszError(f"--bands {given}: give 3 (or 1) band numbers counting from 1, e.g. 3,2,1")


@dataclass(frozen=True)
class SceneInfo:
    """What every window of one GeoTIFF scene shares."""

    path: str
    width: int
    height: int
    band_count: int
    dtype: str
    bands: tuple[int, ...]  # 1-based bands read for R, G, B (or one for grey)
    stretch: tuple[float, float] | None  # (lo, hi) over the read bands; None for 8-bit data
    rule: str
    crs: str | None = None  # the source CRS ("EPSG:32633", or WKT); None: pixel coordinates only
    scale: float = 1.0  # source pixels per model-side pixel (--gsd); windows are read resampled by it
    palette: np.ndarray | None = None  # [256, 3] uint8 colour table of a paletted band (GIF/PNG 'P', GTiff)
    bits: int = 8  # bits per sample of 8-bit bands stored with fewer (1-bit scans): see sample_bits


@dataclass(frozen=True)
class Tile:
    id: str  # the file path, or "scene.tif@col,row,width,height" for a scene window
    path: str  # the file (the scene for windows)
    window: tuple[int, int, int, int] | None = None  # col_off, row_off, width, height
    footprint: dict | None = None  # GeoJSON geometry in EPSG:4326 for georeferenced tiles
    scene: SceneInfo | None = None
    problem: str | None = None  # found during discovery; decoding raises it
    crs: str | None = None  # the source CRS of georeferenced tiles
    reader: str = "pillow"  # whole-file tiles: "pillow" (JPEG/PNG) or "gdal" (anything rasterio opens)
    # source pixels per decoded pixel (--gsd resamples while reading; windows: scene.scale)
    scale: float = 1.0


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    if text is None or text == "":
        return None
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise RszError(f"--bands {text}: expected band numbers such as 3,2,1") from None


# ---------------------------------------------------------------- discovery

# A GDAL virtual path (/vsimem/, /vsizip/, /vsicurl/, /vsis3/ ...) or a URL GDAL reads (s3://, https://):
# handed to GDAL as the user wrote it, never through Path() (which would turn "s3://b/k" into "s3:/b/k").
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# A further page of a multi-page TIFF as GDAL names it (GTIFF_DIR:2:scan.tif); the first page is the file
_TIFF_PAGE = re.compile(r"^GTIFF_DIR:(\d+):")
# Files in a folder that GDAL may open but that belong to another raster (overviews, masks) or are no imagery
_SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk", ".json", ".xml", ".txt", ".csv")
_TEXT_DRIVERS = ("XYZ", "AAIGrid", "GRASSASCIIGrid", "ISG", "CTable2", "GSAG", "Leveller")


def is_gdal_path(name: str | Path) -> bool:
    """True for GDAL virtual file system paths, URLs and TIFF pages: they go to GDAL untouched (also a STAC
    item's band assets read as one, RGB_STACK_PREFIX: see rsz_infer.stac)."""
    text = str(name)
    prefixed = text.startswith(("/vsi", RGB_STACK_PREFIX))
    return prefixed or bool(_URL.match(text)) or bool(_TIFF_PAGE.match(text))


def tiff_page(name: str) -> tuple[int, str] | None:
    """(page number, file) of a further TIFF page's name (GTIFF_DIR:2:scan.tif -> 2, scan.tif), else None."""
    match = _TIFF_PAGE.match(name)
    return (int(match.group(1)), name[match.end() :]) if match else None


def open_raster(name: str):  # -> rasterio.DatasetReader (rasterio is imported lazily)
    """rasterio.open, where a further TIFF page takes its georeferencing from its own tags (or its own entry
    in the .aux.xml) only: GDAL gives every page the file's world file or MapInfo .tab, which describe the
    first page, so a page of another grid would get a wrong footprint (and class map, and --gsd scale)."""
    import rasterio

    if tiff_page(name):
        return rasterio.open(name, GEOREF_SOURCES="PAM,INTERNAL")
    if name.startswith(RGB_STACK_PREFIX):  # a STAC item's red, green and blue assets: GDAL reads one VRT
        from rsz_infer.stac import rgb_stack_vrt

        try:
            xml = rgb_stack_vrt(name)
        except RszError as err:  # the item's JSON or a band changed since discovery: an unreadable raster
            raise rasterio.errors.RasterioIOError(str(err)) from None
        return rasterio.open(xml)
    return rasterio.open(name)


def local_file(name: str | Path) -> str | None:
    """The local file a name reads (a TIFF page's file: GTIFF_DIR:2:scan.tif reads scan.tif), None for a GDAL
    virtual path or URL."""
    page = tiff_page(str(name))
    text = page[1] if page else str(name)
    return None if is_gdal_path(text) else text


def discover_tiles(
    inputs: Iterable[str | Path], options: TileOptions, notes: list[str] | None = None
) -> Iterator[Tile]:
    """Tiles of every input in a stable order (sorted within folders). Missing inputs are usage errors.

    An input is a folder, a file, a GDAL virtual path or URL, or a STAC JSON (Item, ItemCollection,
    catalog). Whatever GDAL opens is a raster (VRT, JP2, COG, NITF ...); images larger than the tile size
    are cut into windows, georeferenced or not. `notes` collects what the user should hear once.
    """
    named = [str(p) if is_gdal_path(p) else Path(p) for p in inputs]
    for path in named:
        local = local_file(path)
        if local is not None and not os.path.exists(local):
            raise RszError(f"{path}: no such file or folder")
    seen: set[str] = set()  # a file named twice (or inside a named folder too) is one tile
    windows = False
    no_gsd: dict[str, None] = {}  # rasters --gsd cannot apply to (no CRS), in order
    rgb_only, first_rgb_only = 0, ""  # JPEG/PNG tiles Pillow decodes as RGB: --bands does not apply to them
    for path in named:
        for name, in_folder, problem in _expand(path, options):
            key = name if problem else _raster_key(name)
            page = tiff_page(name)
            if key in seen or (page and not problem and _raster_key(page[1]) in seen):  # listed, or its file
                continue
            seen.add(key)
            if problem is None and not is_gdal_path(name) and not Path(name).exists():
                # listed (a named input, a folder's file) but removed since: the batch goes on without it
                problem = "no such file (removed after the inputs were listed)"
            if problem:
                yield Tile(id=name, path=name, problem=problem)
                continue
            for tile in _tiles_of_file(name, options, seen, in_folder):
                windows = windows or tile.window is not None
                if options.gsd and tile.crs is None and not tile.problem:
                    no_gsd[tile.path] = None
                if options.bands and tile.reader == "pillow" and tile.window is None and not tile.problem:
                    rgb_only, first_rgb_only = rgb_only + 1, first_rgb_only or tile.path
                yield tile
    if notes is not None and options.overlap and not windows:
        notes.append(f"--overlap {options.overlap}: ignored, no input is larger than --tile-size")
    if notes is not None and options.asset:
        if not any(isinstance(p, Path) and p.is_file() and is_stac_input(p) for p in named):
            notes.append(f"--asset {options.asset}: ignored, no input is a STAC JSON")
    if notes is not None and rgb_only:
        bands = ",".join(map(str, options.bands or ()))
        notes.append(
            f"--bands {bands}: not applied to {rgb_only} JPEG/PNG tiles within --tile-size, read as RGB "
            f"(e.g. {first_rgb_only}); it selects bands of what GDAL reads (TIFFs, larger images)"
        )
    if notes is not None and no_gsd:
        first = next(iter(no_gsd))
        notes.append(f"--gsd {options.gsd:g}: ignored for {len(no_gsd)} images without a CRS (e.g. {first})")


def no_tiles_found(inputs: Iterable[str | Path]) -> RszError:
    """The usage error of an input with no tile at all (rsz-infer label and index alike)."""
    return RszError(f"{', '.join(map(str, inputs))}: no JPEG, PNG or TIFF files found")


@dataclass
class TileListing:
    """One pass over discover_tiles, holding no tile: a scene of any declared size costs nothing."""

    found: int = 0  # every tile of the inputs
    count: int = 0  # those `keep` takes (e.g. this shard's)
    windows: bool = False  # any scene window among them all
    digest: object = field(default_factory=hashlib.sha256)  # of the kept tiles' ids, in discovery order

    def tiles(self) -> dict:
        """The kept tiles as a finished output records them (outputs.write_finished)."""
        return {"tiles": self.count, "ids": self.digest.hexdigest()}


def list_tiles(
    inputs: Iterable[str | Path],
    options: TileOptions,
    notes: list[str] | None = None,
    keep: Callable[[Tile], bool] | None = None,
) -> TileListing:
    """Count the tiles of the inputs (and collect discovery notes) without holding them."""
    listing = TileListing()
    short: list[str] = []  # rasters --bands names more bands than they have: skipped rows, unless all are
    for tile in discover_tiles(inputs, options, notes):
        listing.found += 1
        if reason := short_of_bands(tile):
            short.append(reason)
        if keep is None or keep(tile):
            listing.count += 1
            listing.digest.update(tile.id.encode("utf-8", "surrogateescape") + b"\n")
        listing.windows = listing.windows or tile.window is not None
    check_bands_reach(short, listing.found)
    return listing


def check_bands_reach(short: list[str], found: int) -> None:
    """The usage error when every one of the `found` tiles is short of --bands (`short`: "PATH: the file has
    only N bands for --bands ..." each): a typo in --bands, not a run of skipped rows. Some short: rows."""
    if short and len(short) == found:
        more = f" (and {len(short) - 1} more inputs)" if len(short) > 1 else ""
        raise RszError(short[0] + more)


def short_of_bands(tile: Tile) -> str | None:
    """For a tile whose raster has fewer bands than --bands names: "PATH: the file has only N bands for
    --bands ...", the line list_tiles (and the --ray index) gives when every input is such a tile."""
    return f"{tile.path}: {tile.problem}" if tile.problem and _TOO_FEW_BANDS.fullmatch(tile.problem) else None


def _expand(path: str | Path, options: TileOptions) -> Iterator[tuple[str, bool, str | None]]:
    """(raster name, found inside a folder, problem) for one input: folder files, STAC assets, itself."""
    if isinstance(path, str):
        yield path, False, None
    elif path.is_dir():
        for file in sorted(_folder_files(path)):
            name = file.name.lower()
            if not name.startswith(".") and not name.endswith(_SIDECAR_SUFFIXES):
                yield str(file), True, None
    elif is_stac_input(path):
        from rsz_infer.stac import stac_asset_hrefs

        for href, problem in stac_asset_hrefs(path, options.asset):
            if problem is None and not is_gdal_path(href) and not Path(href).exists():
                problem = "no such file (named by a STAC asset)"
            yield href, False, problem
    else:
        yield str(path), False, None


def is_stac_input(path: Path) -> bool:
    """A named `.json` file, or a `.geojson` one holding STAC (an ItemCollection is a FeatureCollection)."""
    from rsz_infer.stac import is_stac_geojson

    suffix = path.suffix.lower()
    return suffix == ".json" or (suffix == ".geojson" and is_stac_geojson(path))


def _folder_files(folder: Path) -> Iterator[Path]:
    """Every file under the folder, linked folders included (a data set is often a folder of links); each
    real folder is walked once, so a link to a folder above ends there instead of looping."""
    walked: set[tuple[int, int]] = set()
    for root, folders, files in os.walk(folder, followlinks=True):
        try:
            info = os.stat(root)
        except OSError:  # gone since it was listed
            continue
        if (info.st_dev, info.st_ino) in walked:
            folders.clear()
            continue
        walked.add((info.st_dev, info.st_ino))
        yield from (p for p in map(Path(root).joinpath, files) if p.is_file())


def _quiet_rasterio() -> None:
    """Plain (not georeferenced) TIFFs are normal input here, not worth a warning per file; nor is an RGBA
    scene with a nodata value too, whose mask GDAL takes from the nodata value, as rsz means it to."""
    import warnings

    from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    warnings.filterwarnings("ignore", category=NodataShadowWarning)


def _pillow_size(name: str) -> tuple[int, int] | None:
    """(width, height) from the header when Pillow reads this file (JPEG/PNG), else None.

    Pillow's own bomb check (beyond ~179 megapixels) is not the limit: such a file is left to GDAL's header
    read, so --max-pixels decides for every size.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(name) as im:
                return im.size if im.format in ("JPEG", "PNG") else None
    except Exception:  # not an image Pillow knows, a corrupt one, or Pillow's bomb error: GDAL says more
        return None


def too_many_pixels(width: int, height: int, options: TileOptions, what: str = "declares") -> str | None:
    """The skip reason when a declared size is above --max-pixels (checked before decoding), else None."""
    if width * height <= options.max_pixels:
        return None
    return (
        f"image {what} {width}x{height} = {width * height:,} pixels, more than --max-pixels "
        f"{options.max_pixels:,} (not decoded)"
    )


def _raster_key(name: str) -> str:
    """What makes two input names one raster: a local file's real path, a TIFF page's number and its file's
    key, a GDAL path or URL as written."""
    page = tiff_page(name)
    if page is not None:
        return f"GTIFF_DIR:{page[0]}:{_raster_key(page[1])}"
    return name if is_gdal_path(name) else str(Path(name).resolve())


def _tiles_of_file(
    name: str, options: TileOptions, seen: set[str], in_folder: bool = False
) -> Iterator[Tile]:
    """The tiles of one file, then those of each further page of a multi-page TIFF: GDAL opens only the
    first page of such a file, and the others are images too (a stack of scans or dates). A page also named
    as an input (`seen`, the keys of the rasters listed so far) is listed once; so is its first page, which
    is the file itself (GTIFF_DIR:1:scan.tif named before scan.tif)."""
    pages: list[str] = []
    listed = False  # its first page, named as GTIFF_DIR:1:NAME before
    if not tiff_page(name):
        first_page = _raster_key(f"GTIFF_DIR:1:{name}")
        listed = first_page in seen
        seen.add(first_page)
    for tile in _tiles_of_page(name, options, in_folder, pages):
        if not listed:
            yield tile
    for page in pages:
        if _raster_key(page) not in seen:
            seen.add(_raster_key(page))
            yield from _tiles_of_page(page, options)  # named, not found in a folder: a bad page is a row


def _tiles_of_page(
    name: str, options: TileOptions, in_folder: bool = False, pages: list[str] | None = None
) -> Iterator[Tile]:
    """The tiles of one raster; `pages` collects the names of a multi-page TIFF's further pages."""
    local = not is_gdal_path(name)
    suffix = Path(name).suffix.lower() if local else ""
    if local and Path(name).stat().st_size == 0:
        if not in_folder or suffix in IMAGE_EXTENSIONS:
            yield Tile(id=name, path=name, problem="empty file (0 bytes)")
        return
    if local and suffix in PILLOW_EXTENSIONS:
        size = _pillow_size(name)
        too_many = too_many_pixels(*size, options) if size is not None else None
        if too_many:
            yield Tile(id=name, path=name, problem=too_many)
            return
        if (size is None and not _gdal_opens(name)) or (size is not None and max(size) <= options.tile_size):
            # Plain JPEG/PNG tiles: Pillow (or nvImageCodec) decodes them; a corrupt one fails there
            yield Tile(id=name, path=name)
            return
    if local and not utf8_name(name):
        # GDAL takes UTF-8 paths only (rasterio.open raises UnicodeEncodeError): say so, never drop the file
        if not in_folder or suffix in RASTER_SUFFIXES:
            yield Tile(id=name, path=name, problem=NOT_UTF8_NAME)
        return
    import rasterio

    _quiet_rasterio()
    try:
        with open_raster(name) as ds:
            if in_folder and ds.driver in _TEXT_DRIVERS:
                return  # a text table GDAL reads as a grid is not imagery
            if pages is not None and ds.driver == "GTiff":
                pages += ds.subdatasets[1:]  # GDAL lists no overview or mask as a page
            crs = ds.crs.to_string() if ds.crs else None
            scale = _gsd_scale(ds, options)
            _check_gsd_scale(ds, name, scale, options)
            window_px = round(options.tile_size * scale)  # the window in source pixels
            windowed = ds.width > window_px or ds.height > window_px
            # What one read decodes at least: the whole image (read whole, or JPEG/PNG), else one block
            # (a single-strip TIFF is one block of the whole image)
            problem = too_many_pixels(ds.width, ds.height, options)
            if windowed and ds.driver not in SEQUENTIAL_DRIVERS:
                block_width, block_height, stored = _stored_block(ds, name)
                problem = too_many_pixels(block_width, block_height, options, stored)
            if not problem and windowed and min(ds.width, ds.height) / scale < options.min_size:
                # a strip (100000 x 1 px): every window would be too thin, so the file is one row, not one
                # per window; its size as the model would see it (--gsd)
                problem = too_small(int(ds.width / scale), int(ds.height / scale), options)
            if problem:
                yield Tile(id=name, path=name, problem=problem)
                return
            if windowed:
                try:
                    scene = _scene_info(ds, name, options)
                except TileError as err:  # --bands beyond its bands: one skipped row, the other inputs go on
                    yield Tile(id=name, path=name, problem=str(err))
                    return
                yield from _scene_windows(ds, scene, options)
                return
            try:  # --bands beyond its bands: said at discovery, as for a scene (list_tiles counts them)
                choose_bands(ds.count, options.bands, name, ds.colorinterp)
            except TileError as err:
                yield Tile(id=name, path=name, problem=str(err))
                return
            footprint = _footprints(ds, [0], 0, ds.width, ds.height)[0] if ds.crs else None
    except (rasterio.errors.RasterioError, ValueError) as err:  # not a raster, unreadable, unknown CRS
        if suffix in TIFF_EXTENSIONS:
            yield Tile(id=name, path=name, problem=f"cannot read TIFF ({first_line(err)})")
        elif not in_folder:  # named by the user: say why it is not labeled
            yield Tile(id=name, path=name, problem=f"not a raster GDAL can open ({first_line(err)})")
        return
    yield Tile(id=name, path=name, footprint=footprint, crs=crs, reader="gdal", scale=scale)


def utf8_name(name: str) -> bool:
    """False for a file name holding bytes that are not UTF-8 (Python keeps them as surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8_escaped(name: str) -> str:
    """`name` with the bytes that are not UTF-8 (surrogate escapes) as backslash escapes ("y\\xff.png"):
    valid UTF-8 text for writers and terminals that take nothing else; a UTF-8 name comes back unchanged."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _check_gsd_scale(ds, name: str, scale: float, options: TileOptions) -> None:
    """--gsd must leave a window of at least one source pixel, read and decoded in no more than --max-pixels
    (a tiny --gsd would enlarge 1-pixel windows to huge arrays, a large one read huge windows, which the
    decoders would skip one by one): else a usage error before any work."""
    if scale == 1.0:
        return
    source = f"{options.gsd / scale:.3g} m"
    if options.tile_size * scale < 1:
        raise RszError(
            f"--gsd {options.gsd:g}: a {options.tile_size} px window of {name} would cover less than one of "
            f"its {source} pixels; give a --gsd nearer the scene's"
        )
    # the most a read decodes: a whole window (or a raster smaller than one, read whole) of source pixels,
    # or what GDAL resamples it to when that is more (enlarging)
    side = max(1, round(options.tile_size * scale))
    width, height = min(side, ds.width), min(side, ds.height)
    decoded = max(width * height, max(1, round(width / scale)) * max(1, round(height / scale)))
    if decoded > options.max_pixels:
        raise RszError(
            f"--gsd {options.gsd:g}: a window of {name} ({source} pixels) would decode to {decoded:,} "
            f"pixels, more than --max-pixels {options.max_pixels:,}"
        )


def _stored_block(ds, name: str) -> tuple[int, int, str]:
    """(width, height, how it is stored) of the least one window read decodes.

    GDAL's block size, except for a TIFF kept as one big compressed strip: GDAL shows it as one-row blocks
    but has no random access into the compressed stream (each window decodes from the strip's top), so the
    whole strip is the block. Reopened with GDAL's split off, GDAL reports the stored layout itself.
    (Uncompressed strips stay one-row blocks there: GDAL reads the bytes of the rows it needs.)
    """
    import rasterio

    block_height, block_width = ds.block_shapes[0]
    if ds.driver == "GTiff" and not ds.profile.get("tiled") and block_height == 1 < ds.height:
        with rasterio.Env(GDAL_ENABLE_TIFF_SPLIT="NO"), rasterio.open(name) as stored:
            strip_height, strip_width = stored.block_shapes[0]
        if strip_height > 1:
            return strip_width, strip_height, "is stored in one compressed strip of"
    return block_width, block_height, "is stored in blocks of"


def _gdal_opens(name: str) -> bool:
    """A .jpg/.png Pillow did not read as a JPEG/PNG: does GDAL open it? Then GDAL's branch takes it, as
    any raster (a TIFF under that suffix, a header beyond Pillow's bomb limit that --max-pixels judges);
    otherwise it is a Pillow tile, whose decoding says what is wrong with the file."""
    import rasterio

    _quiet_rasterio()
    try:
        with rasterio.open(name):
            return True
    except Exception:  # not readable by GDAL either: a corrupt file
        return False


def _scene_info(ds, path: str, options: TileOptions) -> SceneInfo:
    """What the windows of a scene share; TileError when --bands names more bands than it has."""
    bands, band_rule = choose_bands(ds.count, options.bands, path, ds.colorinterp)
    dtype = ds.dtypes[0]
    stretch = None
    rule = band_rule
    palette = palette_of(ds, bands)
    if palette is not None:
        rule = "palette to rgb"
    elif dtype != "uint8":
        stretch = _percentiles(_stretch_sample(ds, bands))
        rule += f"; {dtype} {STRETCH_RULE} per scene"
    crs = ds.crs.to_string() if ds.crs else None
    scale = _gsd_scale(ds, options)
    if scale != 1.0:
        method = _resampling_name(scale, palette is not None)
        rule += _resampled_rule(options.gsd, scale, method)
    bits = sample_bits(ds, bands)
    return SceneInfo(
        path, ds.width, ds.height, ds.count, dtype, bands, stretch, rule, crs, scale, palette, bits
    )


def _resampling_name(scale: float, paletted: bool) -> str:
    """GDAL resampling for --gsd: colour-table indices are categories (nearest); else average or bilinear."""
    return "nearest" if paletted else "average" if scale > 1 else "bilinear"


def _resampled_rule(gsd: float, scale: float, method: str) -> str:
    """The rule's note on a --gsd resampling: source and model metres per pixel, and how."""
    return f"; resampled {gsd / scale:.3g} m -> {gsd:.3g} m per pixel ({method})"


def source_gsd(ds) -> float | None:
    """Metres per pixel of a georeferenced raster (mean of x and y), None without a CRS.

    Projected CRSs through their linear unit; geographic ones at the scene centre's latitude.
    """
    if ds.crs is None:
        return None
    res_x, res_y = abs(ds.res[0]), abs(ds.res[1])
    if ds.crs.is_geographic:
        lat = np.radians((ds.bounds.bottom + ds.bounds.top) / 2)
        return float((res_x * 111_320 * np.cos(lat) + res_y * 110_574) / 2)
    _, metres = ds.crs.linear_units_factor
    return float((res_x + res_y) / 2 * metres)


def _gsd_scale(ds, options: TileOptions) -> float:
    """Source pixels per pixel the model sees: --gsd over the raster's own GSD (1 when either is unknown)."""
    gsd = source_gsd(ds) if options.gsd else None
    if not gsd:
        return 1.0
    scale = options.gsd / gsd
    return 1.0 if abs(scale - 1) < 1e-3 else scale


def _stretch_sample(ds, bands: tuple[int, ...]) -> np.ndarray:
    """Valid pixel values of the scene to take percentiles from, without reading all of it.

    A decimated read when GDAL can serve it cheaply (overviews, or a scene that is small anyway);
    otherwise a grid of small windows spread over the scene (a decimated read without overviews would
    decompress every block).
    """
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    if ds.overviews(bands[0]) or ds.width * ds.height <= DECIMATED_READ_MAX_PIXELS:
        factor = max(1, int(np.ceil(max(ds.width, ds.height) / OVERVIEW_MAX_SIDE)))
        shape = (len(bands), max(1, ds.height // factor), max(1, ds.width // factor))
        data = ds.read(list(bands), out_shape=shape, resampling=Resampling.nearest, masked=True)
        return np.ma.compressed(data)
    size = min(SAMPLE_WINDOW_PX, ds.width, ds.height)
    samples = []
    for row in np.linspace(0, ds.height - size, SAMPLE_GRID).astype(int):
        for col in np.linspace(0, ds.width - size, SAMPLE_GRID).astype(int):
            window = Window(int(col), int(row), size, size)
            samples.append(np.ma.compressed(ds.read(list(bands), window=window, masked=True)))
    return np.concatenate(samples)


def _window_offsets(length: int, tile: int, stride: int) -> list[int]:
    """Window starts covering [0, length): a regular grid, the last one moved back to end at the edge."""
    if length <= tile:
        return [0]
    offsets = list(range(0, length - tile + 1, stride))
    if offsets[-1] + tile < length:
        offsets.append(length - tile)
    return offsets


def _scene_windows(ds, scene: SceneInfo, options: TileOptions) -> Iterator[Tile]:
    """The windows of a raster larger than the tile size; footprints in EPSG:4326 when it has a CRS.

    A generator, one row of windows at a time: memory stays the same whatever size the header declares.
    """
    # With --gsd, a window covers tile_size pixels at the model's GSD: round(tile_size * scale) of the scene's
    size = max(1, round(options.tile_size * scene.scale))
    stride = max(1, size - round(options.overlap * scene.scale))
    width, height = min(size, ds.width), min(size, ds.height)
    col_offsets = _window_offsets(ds.width, size, stride)
    for row in _window_offsets(ds.height, size, stride):
        # Footprints: the corners of this row of windows reprojected in one call; without a CRS none (the
        # window itself is the footprint: outputs draw it in pixel coordinates)
        footprints = _footprints(ds, col_offsets, row, width, height) if ds.crs else [None] * len(col_offsets)
        for c, footprint in zip(col_offsets, footprints):
            yield Tile(
                id=f"{scene.path}@{c},{row},{width},{height}",
                path=scene.path,
                window=(c, row, width, height),
                footprint=footprint,
                scene=scene,
                crs=scene.crs,
                scale=scene.scale,
            )


def _footprints(ds, cols: list[int], row: int, width: int, height: int) -> list[dict]:
    """GeoJSON polygons in EPSG:4326 of the windows (col, row, width, height) for each col: the four pixel
    corners through the raster's full affine transform (a rotated or sheared grid keeps its true corners;
    its axis-aligned bounds would not), reprojected in one call."""
    from rasterio.warp import transform

    corner_cols = np.array(cols, np.float64)[:, None] + np.array([0, width, width, 0, 0], np.float64)
    corner_rows = row + np.array([height, height, 0, 0, height], np.float64)[None, :]
    t = ds.transform
    xs, ys = t.a * corner_cols + t.b * corner_rows + t.c, t.d * corner_cols + t.e * corner_rows + t.f
    lons, lats = transform(ds.crs, "EPSG:4326", np.ravel(xs), np.ravel(ys))
    lons, lats = np.reshape(lons, corner_cols.shape), np.reshape(lats, corner_cols.shape)
    return [_lonlat_polygon(lo, la) for lo, la in zip(lons, lats)]


def _lonlat_polygon(lons: np.ndarray, lats: np.ndarray) -> dict:
    """A window's ring in lon/lat as GeoJSON: a Polygon, or where it crosses the antimeridian (its corners
    more than 180 degrees of longitude apart) a MultiPolygon of its two sides, cut at 180 as RFC 7946 asks
    (one ring from 179.9 to -179.9 would run the other way round the globe). Longitudes past 180 (a
    geographic grid drawn on past the antimeridian) are wrapped into -180..180 first."""
    lons = (lons + 180) % 360 - 180
    if np.sum(lons[:-1] * lats[1:] - lons[1:] * lats[:-1]) < 0:
        # a south-up or mirrored grid: its corners come round clockwise; RFC 7946 rings run counterclockwise
        lons, lats = lons[::-1], lats[::-1]
    plain = {"type": "Polygon", "coordinates": [[[float(x), float(y)] for x, y in zip(lons, lats)]]}
    if lons.max() - lons.min() <= 180:
        return plain
    import shapely
    from shapely import affinity
    from shapely.geometry.polygon import orient

    ring = shapely.Polygon(zip(np.where(lons < 0, lons + 360, lons), lats))  # continuous across 180
    if not ring.is_valid:  # a window around a pole: no lon/lat ring of its corners draws it
        return plain
    east = ring.intersection(shapely.box(-180, -90, 180, 90))
    west = affinity.translate(ring.intersection(shapely.box(180, -90, 540, 90)), -360)
    parts = [orient(p) for side in (east, west) for p in getattr(side, "geoms", [side]) if p.area > 0]
    if len(parts) == 1:  # a corner on the antimeridian itself (-180 and 180 are one meridian)
        return {"type": "Polygon", "coordinates": [[list(xy) for xy in parts[0].exterior.coords]]}
    return {"type": "MultiPolygon", "coordinates": [[[list(xy) for xy in p.exterior.coords]] for p in parts]}


# ---------------------------------------------------------------- decoding


def palette_of(ds, bands: tuple[int, ...]) -> np.ndarray | None:
    """The colour table of a single paletted 8-bit band as a [256, 3] lookup, else None."""
    from rasterio.enums import ColorInterp

    if (
        len(bands) != 1
        or ds.dtypes[bands[0] - 1] != "uint8"
        or ds.colorinterp[bands[0] - 1] != ColorInterp.palette
    ):
        return None
    table = np.zeros((256, 3), np.uint8)
    for index, rgba in ds.colormap(bands[0]).items():
        if 0 <= index < 256:
            table[index] = rgba[:3]
    return table


def sample_bits(ds, bands: tuple[int, ...]) -> int:
    """Bits per sample of 8-bit bands stored with fewer (NBITS 1, 2, 4: bilevel scans, 1-bit PNGs), else 8.

    GDAL reads such samples as they are stored (0-1, 0-3, 0-15) where Pillow scales them to 0-255: a 1-bit
    PNG would be a black tile through GDAL (its windows, a TIFF). Colour tables map the stored values."""
    if ds.dtypes[bands[0] - 1] != "uint8":
        return 8
    nbits = ds.tags(bands[0], ns="IMAGE_STRUCTURE").get("NBITS", "8")
    return int(nbits) if nbits.isdigit() and 1 <= int(nbits) < 8 else 8


def full_range(data: np.ndarray, bits: int) -> np.ndarray:
    """uint8 samples of `bits` bits (< 8) scaled to 0-255 as Pillow unpacks them (1, 3, 15 -> 255)."""
    if bits >= 8:
        return data
    levels = np.round(np.arange(256) * (255 / (2**bits - 1)))
    return np.clip(levels, 0, 255).astype(np.uint8)[data]


def choose_bands(
    count: int, requested: tuple[int, ...] | None, where: str, colours: Sequence = ()
) -> tuple[tuple[int, ...], str]:
    """Which 1-based bands make R, G, B (or one grey band), and the rule that says so.

    `colours`: the bands' GDAL colour interpretations; without --bands, a file that declares its red,
    green and blue bands (a B, G, R, NIR product) has those read as R, G, B, not bands 1, 2, 3."""
    if requested is not None and count > 1:
        if max(requested) > count:
            raise TileError(f"the file has only {count} bands for --bands {','.join(map(str, requested))}")
        return requested, f"bands {','.join(map(str, requested))} of {count}"
    names = [getattr(colour, "name", None) for colour in colours]
    if all(names.count(name) == 1 for name in ("red", "green", "blue")):
        declared = tuple(names.index(name) + 1 for name in ("red", "green", "blue"))
        if declared != (1, 2, 3):
            return declared, f"bands {','.join(map(str, declared))} of {count} (its red, green, blue)"
    if count == 1:
        return (1,), "grey to rgb"
    if count == 2:
        return (1,), "band 1 of 2 as grey"
    if count == 3:
        return (1, 2, 3), "rgb"
    return (1, 2, 3), f"bands 1,2,3 of {count}"


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]  # NaN (and inf) pixels are nodata, never part of the stretch
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, STRETCH_PERCENTILES)
    return float(lo), float(max(hi, lo + 1e-6))


def _stretch(band: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (band.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def _to_rgb8(
    bands: np.ndarray, stretch: tuple[float, float] | None, valid: np.ndarray | None = None
) -> np.ndarray:
    """[n, H, W] selected bands (n = 1 or 3) of any dtype -> HxWx3 uint8.

    Data that are not 8-bit are stretched linearly between the 2nd and 98th percentile taken over all
    selected bands together: one stretch for R, G and B keeps their balance, so colours stay colours.
    `valid` (HxW, GDAL's dataset mask): pixels outside it are nodata, as NaN pixels are.
    """
    if valid is not None:
        if not valid.any():
            raise NodataTile("all nodata")
        if bands.dtype != np.uint8 and not valid.all():
            # declared nodata must not pull the stretch down (or up): treat it as NaN
            bands = np.where(valid, bands.astype(np.float32), np.float32(np.nan))
    if bands.dtype.kind == "f":
        # NaN pixels are nodata even when the file declares none: a tile of only NaN is skipped as
        # nodata, and in a partly valid tile they become the bottom of the stretch (black)
        finite = np.isfinite(bands)
        if not finite.any():
            raise NodataTile("all nodata (NaN pixels)")
        if not finite.all():
            stretch = stretch if stretch is not None else _percentiles(bands.ravel())  # the valid pixels'
            bands = np.where(finite, bands, np.float32(stretch[0]))
    if bands.dtype != np.uint8:
        lo, hi = stretch if stretch is not None else _percentiles(bands.ravel())
        bands = _stretch(bands, lo, hi)
    if bands.shape[0] == 1:
        bands = np.repeat(bands, 3, axis=0)
    return np.ascontiguousarray(bands.transpose(1, 2, 0))


_thread_state = threading.local()


def _open_scene(path: str):
    """One open rasterio dataset per scene and worker thread (datasets are not shared across threads)."""

    cache = getattr(_thread_state, "scenes", None)
    if cache is None:
        cache = _thread_state.scenes = {}
    if path not in cache:
        if len(cache) >= OPEN_SCENES_PER_THREAD:  # scenes come one after another: close the oldest
            cache.pop(next(iter(cache))).close()
        _quiet_rasterio()  # also in a process that decodes tiles it did not discover (--ray decode tasks)
        cache[path] = open_raster(path)
    return cache[path]


def decode_tile(tile: Tile, options: TileOptions, jpeg_draft: int = 0) -> tuple[np.ndarray, str]:
    """HxWx3 uint8 RGB and the rule that made it; raises TileError (NodataTile) for tiles to skip.

    jpeg_draft > 0: JPEG files may be decoded at a reduced DCT scale, both sides still >= jpeg_draft
    (`--decoder pillow-draft`, rsz_infer.decoders)."""
    if tile.problem:
        raise TileError(tile.problem)
    try:
        if tile.window is not None:
            rgb, rule = _decode_window(tile, options)
        elif tile.reader == "gdal":
            rgb, rule = _decode_gdal(tile.path, options)
        else:
            rgb, rule = _decode_pillow(tile.path, options, jpeg_draft)
    except TileError:
        raise
    except FileNotFoundError:
        raise TileError("file disappeared during the run") from None
    except Exception as err:  # Pillow and GDAL raise many types for corrupt or truncated files
        raise TileError(f"cannot decode image ({first_line(_decode_cause(err))})") from None
    return check_size(rgb, options), rule


def decode_image_file(path: str | Path, options: TileOptions) -> tuple[np.ndarray, str]:
    """One image file decoded as rsz-infer decodes a tile file, for rsz-train's images and rsz-export's tiles:
    they read one image per file, so a multi-page TIFF is a TileError (its first page alone is not what
    rsz-infer labels: every page) rather than its first page without a word."""
    tile = tile_from_record(str(path), None, options)
    pages = _tiff_page_count(tile.path) if tile.reader == "gdal" else 1
    if pages > 1:
        raise TileError(
            f"a multi-page TIFF ({pages} pages): read as one image per file here; save each page as a file"
        )
    return decode_tile(tile, options)


def _tiff_page_count(path: str) -> int:
    """The pages of a multi-page TIFF (GDAL's subdatasets), else 1; a file GDAL cannot open is decode_tile's
    to report."""
    import rasterio

    _quiet_rasterio()
    try:
        with rasterio.open(path) as ds:
            return len(ds.subdatasets) if ds.driver == "GTiff" and ds.subdatasets else 1
    except rasterio.errors.RasterioError:
        return 1


def _decode_cause(err: BaseException) -> BaseException:
    """rasterio's "Read failed. See previous exception for details." points at the GDAL error it chained:
    that one says what is wrong with the file."""
    cause = err.__cause__ or err.__context__
    return cause if cause is not None and "previous exception" in str(err) else err


def check_size(rgb: np.ndarray, options: TileOptions) -> np.ndarray:
    """The decoded tile, or TileError when it is too small to label (every decoder applies this)."""
    height, width = rgb.shape[:2]
    problem = too_small(width, height, options)
    if problem:
        raise TileError(problem)
    return rgb


def too_small(width: int, height: int, options: TileOptions) -> str | None:
    """The skip reason of an image with a side under the minimum, else None."""
    if min(width, height) >= options.min_size:
        return None
    return f"image is {width}x{height} px, smaller than the {options.min_size} px minimum"


def _refuse_above_limit(width: int, height: int, options: TileOptions) -> None:
    problem = too_many_pixels(width, height, options)
    if problem:
        raise TileError(problem)


def _decode_window(tile: Tile, options: TileOptions) -> tuple[np.ndarray, str]:
    from rasterio.windows import Window

    scene = tile.scene
    assert scene is not None and tile.window is not None
    _refuse_above_limit(tile.window[2], tile.window[3], options)  # a --tile-size beyond --max-pixels
    ds = _open_scene(scene.path)
    window = Window(*tile.window)
    valid = ds.dataset_mask(window=window) > 0  # invalid only where every band is nodata
    if not valid.any():
        raise NodataTile("all nodata")
    if scene.scale == 1.0:
        data = ds.read(list(scene.bands), window=window)
    else:  # --gsd: GDAL resamples the window to the model's ground resolution while reading
        from rasterio.enums import Resampling

        _, _, width, height = tile.window
        shape = (len(scene.bands), max(1, round(height / scene.scale)), max(1, round(width / scene.scale)))
        method = Resampling[_resampling_name(scene.scale, scene.palette is not None)]
        data = ds.read(list(scene.bands), window=window, out_shape=shape, resampling=method)
        valid = ds.dataset_mask(window=window, out_shape=shape[1:], resampling=Resampling.nearest) > 0
    if scene.palette is not None:
        return scene.palette[data[0]], scene.rule
    return _to_rgb8(full_range(data, scene.bits), scene.stretch, valid), scene.rule


def _decode_gdal(path: str, options: TileOptions) -> tuple[np.ndarray, str]:

    _quiet_rasterio()  # also for callers that decode without discovering (rsz-train's images)
    with open_raster(path) as ds:
        _refuse_above_limit(ds.width, ds.height, options)  # the file may have changed since discovery
        bands, rule = choose_bands(ds.count, options.bands, path, ds.colorinterp)
        palette = palette_of(ds, bands)
        bits = sample_bits(ds, bands)
        scale = _gsd_scale(ds, options)
        resampled = ""
        if scale == 1.0:
            data = ds.read(list(bands))
            valid = ds.dataset_mask() > 0
        else:  # --gsd on a raster smaller than one window: the whole of it, resampled
            from rasterio.enums import Resampling

            method = _resampling_name(scale, palette is not None)
            shape = (len(bands), max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
            data = ds.read(list(bands), out_shape=shape, resampling=Resampling[method])
            valid = ds.dataset_mask(out_shape=shape[1:], resampling=Resampling.nearest) > 0
            resampled = _resampled_rule(options.gsd, scale, method)
    if not valid.any():  # a file of nodata only (an edge tile of a cut scene) is nodata, as a window is
        raise NodataTile("all nodata")
    if palette is not None:
        return palette[data[0]], "palette to rgb" + resampled
    if data.dtype != np.uint8:
        rule += f"; {data.dtype} {STRETCH_RULE} per image"
    return _to_rgb8(full_range(data, bits), None, valid), rule + resampled


def _decode_pillow(path: str, options: TileOptions, jpeg_draft: int = 0) -> tuple[np.ndarray, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # --max-pixels is the limit
        im = Image.open(path)
    with im:
        _refuse_above_limit(*im.size, options)  # declared in the header: nothing is decoded yet
        if im.format == "PNG" and _png_16bit_colour(im):
            return _decode_gdal(path, options)
        scaled = ""
        if jpeg_draft and im.format == "JPEG":
            full_width = im.size[0]
            im.draft(im.mode, (jpeg_draft, jpeg_draft))  # libjpeg DCT scaling: sides stay >= jpeg_draft
            if im.size[0] != full_width:
                scaled = f"; JPEG decoded at 1/{full_width // im.size[0]} scale"
        im.load()  # forces the full decode so truncated files fail here
        if _fully_transparent(im):
            raise NodataTile("all nodata")
        rgb, rule = _pillow_rgb(im)
        return rgb, rule + scaled


def _fully_transparent(im: Image.Image) -> bool:
    """True when the image's alpha is 0 everywhere (an alpha channel, a transparent palette index or tRNS
    colour): a web-map tile beyond the data is nodata, as GDAL's mask says for a file larger than a tile."""
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        alpha = im.getchannel("A")
    elif "transparency" in im.info:
        alpha = im.convert("RGBA").getchannel("A")
    else:
        return False
    return alpha.getextrema()[1] == 0


def _png_16bit_colour(im: Image.Image) -> bool:
    """A 16-bit RGB, RGBA or grey + alpha PNG (the raw mode Pillow's header parse chose). Pillow cuts such
    samples to 8 bits without a stretch (12-bit data turn black), so GDAL reads them as a 16-bit TIFF is
    read; 16-bit grey alone Pillow reads whole (I;16)."""
    return bool(im.tile) and im.tile[0][3] in ("RGB;16B", "RGBA;16B", "LA;16B")


def _pillow_rgb(im: Image.Image) -> tuple[np.ndarray, str]:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        data = np.asarray(im)[None]
        rule = f"grey to rgb; {mode} {STRETCH_RULE} per image"
        return _to_rgb8(data, None), rule
    if mode == "RGB":
        return np.asarray(im), "rgb"
    if mode in ("L", "1"):
        grey = np.asarray(im.convert("L"))
        return np.repeat(grey[:, :, None], 3, axis=2), "grey to rgb"
    if mode == "LA":
        grey = np.asarray(im.getchannel("L"))
        return np.repeat(grey[:, :, None], 3, axis=2), "grey to rgb; alpha dropped"
    if mode in ("RGBA", "RGBa"):
        return np.asarray(im.convert("RGB")), "rgb; alpha dropped"
    return np.asarray(im.convert("RGB")), f"{mode} to rgb"


def tile_from_record(path: str, window: list[int] | tuple[int, ...] | None, options: TileOptions) -> Tile:
    """Rebuild a Tile from a stored row (index, labels file) so it can be decoded again, e.g. for a report."""
    if window is None:
        local_image = not is_gdal_path(path) and Path(path).suffix.lower() in PILLOW_EXTENSIONS
        # as discovery has it: a .jpg/.png that is another raster GDAL opens (a TIFF) is GDAL's
        pillow = local_image and (_pillow_size(path) is not None or not _gdal_opens(path))
        return Tile(id=path, path=path, reader="pillow" if pillow else "gdal")
    scene = _reopened_scene(path, options)
    col, row, width, height = window
    return Tile(id=f"{path}@{col},{row},{width},{height}", path=path, window=tuple(window), scene=scene)


@functools.lru_cache(maxsize=16)
def _reopened_scene(path: str, options: TileOptions) -> SceneInfo:

    with open_raster(path) as ds:
        return _scene_info(ds, path, options)
