"""The class map: a Cloud-Optimized GeoTIFF of the top-1 class per pixel, in each scene's own grid.

What GDAL, QGIS and rasterio users expect of a categorical raster:
- COG layout (GDAL's COG driver): internal 256 px tiles, overviews made with MODE resampling (a class
  never becomes the average of two others), DEFLATE;
- a colour table and the category names on band 1 (GDAL keeps category names in the PAM sidecar
  `<map>.aux.xml`, which gdalinfo and QGIS read; the names are also in the `classes` tag as JSON); the
  sidecar's colour table has alpha: indices past the classes (nodata among them) are transparent;
- the source's nodata masked per pixel: a pixel that is nodata in the scene is nodata here (255, or 65535
  for more than 254 classes), as are the pixels of skipped windows;
- optionally a second band with the top score (0-100, scale 0.01, so gdalinfo shows it as 0..1);
- a small PNG quicklook with a legend, `<map>.png`, that the HTML gallery shows.
The map is written as a tiled GeoTIFF window by window (never the whole scene in memory), then copied
to the COG beside it and renamed into place, so the target is always complete.
"""

from __future__ import annotations

import colorsys
import ctypes
import functools
import hashlib
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from rsz_infer.errors import RszError
from rsz_infer.images import open_raster, tiff_page
from rsz_infer.stac import is_rgb_stack, rgb_stack_parts

BLOCK_PX = 256
QUICKLOOK_PX = 512  # the quicklook's longer side (at most)
SCORE_SCALE = 0.01  # band 2 stores round(score * 100)
# Distinct colours for the first classes (Tableau 10 + a few), then evenly spread hues
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
]  # fmt: skip


def class_colour(index: int) -> tuple[int, int, int]:
    if index < len(PALETTE):
        return PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0  # golden-ratio steps keep neighbours apart
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


@functools.lru_cache(maxsize=1)
def _gdal_library():
    """The GDAL library rasterio itself runs on (its wheel bundles one), for the calls rasterio lacks
    (category names). Looked up through rasterio's own extension module: symbols of a loaded library's
    handle resolve among its dependencies, so this is the libgdal rasterio links, never the second one
    pyogrio's wheel brings (another version, loaded once a .gpkg or .fgb output is written)."""
    import rasterio._base

    try:
        lib = ctypes.CDLL(rasterio._base.__file__)
        lib.GDALOpen  # noqa: B018  (where symbols do not resolve so (Windows): no category names)
    except (OSError, AttributeError):
        return None
    lib.GDALOpen.restype = ctypes.c_void_p
    lib.GDALOpen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.GDALGetRasterBand.restype = ctypes.c_void_p
    lib.GDALGetRasterBand.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.GDALSetRasterCategoryNames.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p)]
    lib.GDALGetRasterCategoryNames.restype = ctypes.POINTER(ctypes.c_char_p)
    lib.GDALGetRasterCategoryNames.argtypes = [ctypes.c_void_p]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    lib.GDALGetDescription.restype = ctypes.c_char_p
    lib.GDALGetDescription.argtypes = [ctypes.c_void_p]
    lib.GDALCreateColorTable.restype = ctypes.c_void_p
    lib.GDALCreateColorTable.argtypes = [ctypes.c_int]
    lib.GDALSetColorEntry.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_ColorEntry)]
    lib.GDALSetRasterColorTable.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.GDALDestroyColorTable.argtypes = [ctypes.c_void_p]
    return lib


class _ColorEntry(ctypes.Structure):
    """GDALColorEntry: c1..c4 are red, green, blue, alpha."""

    _fields_ = [(name, ctypes.c_short) for name in ("c1", "c2", "c3", "c4")]


def _with_band(path: Path, fn):
    import rasterio

    lib = _gdal_library()
    if lib is None:
        return None
    with rasterio.Env():
        handle = lib.GDALOpen(str(path).encode(), 0)  # read-only: category names go to the PAM sidecar
        if not handle:
            return None
        try:
            return fn(lib, lib.GDALGetRasterBand(handle, 1))
        finally:
            lib.GDALClose(handle)


def set_category_names(path: Path, names: list[str]) -> bool:
    """GDALSetRasterCategoryNames on band 1 (saved to `<path>.aux.xml`); False when GDAL is not reachable."""
    encoded = (ctypes.c_char_p * (len(names) + 1))(*[n.encode("utf-8") for n in names], None)
    return _with_band(path, lambda lib, band: lib.GDALSetRasterCategoryNames(band, encoded) == 0) or False


def set_transparent_colour_table(path: Path, class_count: int, dtype: str) -> bool:
    """Band 1's colour table with alpha (saved to `<path>.aux.xml`, which GDAL reads before the TIFF's own):
    the classes opaque, every index past them transparent (the nodata one too). A TIFF colour table has no
    alpha, so GDAL reads it opaque, and QGIS painted the values past the classes black. uint16 maps get a
    table ending one past the classes (65536 entries would be a 3 MB sidecar): indices beyond it have no
    colour. False when GDAL is not reachable (the TIFF's opaque table stays)."""
    size = 256 if dtype == "uint8" else class_count + 1

    def write(lib, band) -> bool:
        table = lib.GDALCreateColorTable(1)  # GPI_RGB
        try:
            for i in range(size):
                entry = _ColorEntry(*class_colour(i), 255) if i < class_count else _ColorEntry(0, 0, 0, 0)
                lib.GDALSetColorEntry(table, i, ctypes.byref(entry))
            return lib.GDALSetRasterColorTable(band, table) == 0
        finally:
            lib.GDALDestroyColorTable(table)

    return _with_band(path, write) or False


def category_names(path: Path) -> list[str]:
    """Band 1's category names as GDAL (gdalinfo, QGIS) reads them."""

    def read(lib, band) -> list[str]:
        lib.GDALGetDescription(band)  # as gdalinfo does first: GTiff loads the PAM sidecar lazily
        names, array = [], lib.GDALGetRasterCategoryNames(band)
        while array and array[len(names)] is not None:
            names.append(array[len(names)].decode("utf-8"))
        return names

    return _with_band(path, read) or []


def map_targets(target: Path, scenes: list[str]) -> dict[str, Path]:
    """Each scene's class map: `target` for one scene, else `<target stem>.<scene stem>.tif`. Scenes whose
    stems collide (a/visual.tif, b/visual.tif: common in STAC) add their folder's name, and where even that
    collides a short hash of the full path: every scene gets its own map, named the same on every run."""
    if len(scenes) == 1:
        return {scenes[0]: target}

    def digest(scene: str) -> str:
        return hashlib.sha256(scene.encode("utf-8", "surrogateescape")).hexdigest()[:8]

    def stem(scene: str) -> str:  # a further page of a multi-page TIFF (GTIFF_DIR:2:a/scan.tif): scan.page2
        page = tiff_page(scene)
        if is_rgb_stack(scene):  # a STAC item's band assets (STAC_RGB:a/items.json#ID): the item id
            return rgb_stack_parts(scene)[1].replace("/", "_")
        return f"{Path(page[1]).stem}.page{page[0]}" if page else Path(scene).stem

    def folder(scene: str) -> str:
        if is_rgb_stack(scene):  # the STAC JSON's name (items.json#ID: items)
            return Path(rgb_stack_parts(scene)[0]).stem
        page = tiff_page(scene)
        return Path(page[1] if page else scene).parent.name

    stems = Counter(map(stem, scenes))
    names = {}
    for scene in scenes:
        names[scene] = (
            stem(scene) if stems[stem(scene)] == 1 else f"{folder(scene) or digest(scene)}.{stem(scene)}"
        )
    taken = Counter(names.values())
    for scene, name in names.items():
        if taken[name] > 1:  # two folders of one name, or a folder + stem that is another scene's stem
            names[scene] = f"{stem(scene)}.{digest(scene)}"
    return {scene: target.with_name(f"{target.stem}.{name}.tif") for scene, name in names.items()}


def write_class_maps(
    records: list[dict], target: Path, class_names: list[str], with_scores: bool = False
) -> list[tuple[str, Path]]:
    """One COG per scene (see map_targets) and its quicklook; returns (scene, map) pairs."""
    by_scene: dict[str, list[dict]] = {}
    for r in records:
        if r.get("window"):
            by_scene.setdefault(r["path"], []).append(r)
    if not by_scene:
        raise RszError(f"--class-map {target}: no scene (an image larger than --tile-size) among the inputs")
    written = []
    for scene_path, path in map_targets(target, list(by_scene)).items():
        _write_class_map(scene_path, by_scene[scene_path], path, class_names, with_scores)
        written.append((scene_path, path))
    return written


def _write_class_map(
    scene_path: str, records: list[dict], path: Path, class_names: list[str], with_scores: bool
) -> None:
    import rasterio
    import rasterio.shutil
    from rasterio.windows import Window

    dtype, nodata = ("uint8", 255) if len(class_names) < 255 else ("uint16", 65535)
    # ASCII temporary names: GDAL takes UTF-8 paths only, the final os.replace gives any name
    tmp = path.with_name(f".rsz-map.{os.getpid()}.grid.tif")
    tmp_cog = path.with_name(f".rsz-map.{os.getpid()}.cog.tif")
    try:
        with open_raster(scene_path) as scene:
            georef = {"crs": scene.crs, "transform": scene.transform}
            gcps, gcp_crs = scene.gcps
            if scene.crs is None and gcps:  # georeferenced by ground control points only: the map keeps them
                georef = {"gcps": gcps, "crs": gcp_crs}
            elif scene.crs is None and scene.transform.is_identity:
                # no georeference at all (rasterio says identity): written, an identity geotransform would
                # make GDAL and QGIS draw the map upside down beside its scene, so the map gets none either
                georef = {}
            profile = {
                "driver": "GTiff", "width": scene.width, "height": scene.height, "dtype": dtype,
                "count": 2 if with_scores else 1, **georef,
                "nodata": nodata, "tiled": True, "blockxsize": BLOCK_PX, "blockysize": BLOCK_PX,
                "compress": "deflate",
            }  # fmt: skip
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.update_tags(classes=json.dumps(class_names))
                dst.write_colormap(1, {i: (*class_colour(i), 255) for i in range(len(class_names))})
                dst.set_band_description(1, "class")
                if with_scores:
                    dst.set_band_description(2, "top score")
                    dst.scales = (1.0, SCORE_SCALE)
                for r in records:
                    col, row, width, height = r["window"]
                    window = Window(col, row, width, height)
                    # the source's nodata pixel by pixel (GDAL's dataset mask: nodata where every band is)
                    valid = scene.dataset_mask(window=window) > 0
                    known = valid & (r["class_index"] >= 0)  # -1: unknown (below --min-score)
                    block = np.where(known, r["class_index"], nodata).astype(dtype)
                    dst.write(block, 1, window=window)
                    if with_scores:
                        score = np.where(valid, round(r["scores"][0] * 100), nodata).astype(dtype)
                        dst.write(score, 2, window=window)
        set_category_names(tmp, class_names)  # GDAL's PAM sidecar; the COG copy carries it over
        rasterio.shutil.copy(
            tmp, tmp_cog, driver="COG", BLOCKSIZE=BLOCK_PX, COMPRESS="DEFLATE", OVERVIEW_RESAMPLING="MODE"
        )
        set_transparent_colour_table(tmp_cog, len(class_names), dtype)  # the COG copy keeps no alpha
        write_quicklook(tmp_cog, class_names, path.with_suffix(".png"))
        sidecar = Path(f"{tmp_cog}.aux.xml")
        if sidecar.exists():
            os.replace(sidecar, f"{path}.aux.xml")
        os.replace(tmp_cog, path)
    finally:
        for leftover in (tmp, tmp_cog, Path(f"{tmp}.aux.xml"), Path(f"{tmp_cog}.aux.xml")):
            leftover.unlink(missing_ok=True)


def write_quicklook(class_map: Path, class_names: list[str], out: Path) -> Path:
    """A small PNG of the class map (from its overviews) with a legend of the classes it shows."""
    import rasterio
    from PIL import Image, ImageDraw

    from rsz_infer.outputs import atomic_write_bytes

    with rasterio.open(class_map) as ds:
        factor = max(1.0, max(ds.width, ds.height) / QUICKLOOK_PX)
        shape = (max(1, round(ds.height / factor)), max(1, round(ds.width / factor)))
        classes = ds.read(1, out_shape=shape)  # nearest from the closest (MODE) overview
        nodata = ds.nodata
    colours = np.zeros((len(class_names) + 1, 4), np.uint8)
    colours[: len(class_names), :3] = [class_colour(i) for i in range(len(class_names))]
    colours[: len(class_names), 3] = 255
    index = np.where(classes == nodata, len(class_names), np.minimum(classes, len(class_names)))
    picture = Image.fromarray(colours[index], "RGBA")
    shown = [int(i) for i in np.unique(classes) if i != nodata and i < len(class_names)]
    row_px, pad = 16, 6
    legend_w = 12 + max([len(class_names[i]) for i in shown] or [0]) * 7
    canvas = Image.new(
        "RGBA",
        (picture.width + pad * 2 + legend_w, max(picture.height, row_px * len(shown)) + pad * 2),
        "white",
    )
    canvas.paste(picture, (pad, pad), picture)
    draw = ImageDraw.Draw(canvas)
    x = picture.width + pad * 2
    for n, i in enumerate(shown):
        y = pad + n * row_px
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=class_colour(i), outline="black")
        draw.text((x + 14, y), class_names[i], fill="black")
    buf = io.BytesIO()
    canvas.convert("RGB").save(buf, format="PNG", optimize=True)
    atomic_write_bytes(out, buf.getvalue())
    return out
