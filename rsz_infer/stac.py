"""STAC inputs: an Item, an ItemCollection or a static catalog JSON names the rasters to label (pystac).

Each item contributes one asset: `--asset KEY`, or by default its visual / RGB asset. Relative asset
hrefs are resolved against the JSON that names them; absolute local paths, GDAL virtual paths and URLs
named by the user's JSON are handed to GDAL as written. pystac itself only ever reads local JSON here:
a catalog whose links point to remote JSON is refused rather than fetched (rsz downloads nothing).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path

from rsz_infer.errors import RszError, first_line
from rsz_infer.images import RGB_STACK_PREFIX
from rsz_infer.trust import check_regular_file

# The asset keys that mean "the picture of the scene" in common catalogs (Sentinel-2 L2A on Earth Search
# and Planetary Computer, Landsat, NAIP, Maxar open data), in order of preference.
VISUAL_KEYS = ("visual", "rgb", "image", "true_color", "tci", "TCI")
IMAGE_MEDIA = ("image/tiff", "image/jp2", "image/png", "image/jpeg", "application/x-geotiff")
# Pictures of an item that are not its data: a thumbnail or a tiler's rendered preview (a URL, downsampled,
# not georeferenced), never the default even when it is an item's only image
PREVIEW_ROLES = {"thumbnail", "overview"}
NO_HREF = "rsz:no_href"  # marks an asset whose JSON has no usable href (_mark_missing_hrefs)


def is_stac_geojson(path: Path) -> bool:
    """A `.geojson` input that is a STAC Item or ItemCollection (a saved search often is named so); any other
    GeoJSON is left to GDAL, which says it is no raster. Scanned in chunks, so a GeoJSON of hundreds of MB
    is not read into memory to be told it is no STAC (it costs one read; a STAC file stops at the key)."""
    key = b'"stac_version"'
    try:
        check_regular_file(path)
        with open(path, "rb") as f:
            tail = b""
            while chunk := f.read(SCAN_CHUNK):
                if key in tail + chunk:
                    return True
                tail = chunk[-(len(key) - 1) :]  # a key cut by the chunk boundary
    except (OSError, RszError):  # unreadable: GDAL's open says why
        return False
    return False


SCAN_CHUNK = 1 << 20


def _local_stac_io():
    import pystac
    from pystac.stac_io import DefaultStacIO

    from rsz_infer.images import is_gdal_path

    class LocalStacIO(DefaultStacIO):
        """pystac's reader, limited to local files: rsz never downloads a catalog."""

        refused: str | None = None  # pystac wraps errors of link resolution; the caller says this one

        def read_text(self, source, *args, **kwargs) -> str:
            href = str(source)
            if is_gdal_path(href):
                self.refused = href
                raise RszError(f"{href}: a remote STAC link; rsz reads local STAC JSON only")
            check_regular_file(Path(href))  # /dev/zero would be read for ever
            return super().read_text(source, *args, **kwargs)

        def read_json(self, source, *args, **kwargs) -> dict:
            data = super().read_json(source, *args, **kwargs)
            if isinstance(data, dict) and data.get("type") == "Feature":
                _mark_missing_hrefs(data)  # a catalog's item, or a single Item file
            return data

    return pystac, LocalStacIO()


def _items(path: Path) -> list:
    from rsz_infer.images import is_gdal_path

    pystac, stac_io = _local_stac_io()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        kind = data.get("type")
        if kind == "FeatureCollection":
            items = _collection_items(pystac, path, data)
            for item in items:  # relative asset hrefs are relative to the collection's file ...
                if isinstance(item, tuple):
                    continue
                self_href = item.get_self_href()
                if self_href is None or is_gdal_path(self_href):
                    # ... also in a saved API search, whose items keep self links to the API. Cleared
                    # first: pystac rewrites relative hrefs to keep pointing where the old self said
                    item.set_self_href(None)
                    item.set_self_href(str(path.resolve()))
            return items
        stac_object = pystac.read_file(str(path.resolve()), stac_io=stac_io)
        if isinstance(stac_object, pystac.Item):
            return [stac_object]
        if isinstance(stac_object, pystac.Catalog):  # Collection is a Catalog too
            return _catalog_items(pystac, stac_io, stac_object)
    except Exception as err:  # pystac raises many types for malformed JSON and broken links
        if stac_io.refused:
            raise RszError(
                f"{path}: links to remote STAC JSON ({stac_io.refused}); rsz reads local STAC only"
            ) from None
        if isinstance(err, RszError):
            raise
        raise RszError(f"{path}: not a readable STAC JSON ({first_line(err)})") from None
    raise RszError(f"{path}: a STAC {type(stac_object).__name__}, not an Item, ItemCollection or catalog")


def _collection_items(pystac, path: Path, data: dict) -> list:
    """The items of an ItemCollection, read one feature at a time: a malformed one (no properties, assets
    that are no object, ...) is an (id, problem) entry, a skipped row, so it never costs the good items.
    A FeatureCollection none of whose features is STAC is no ItemCollection: a whole-file error."""
    features = data.get("features")
    if not isinstance(features, list):
        raise RszError(f"{path}: not a readable STAC JSON (its 'features' is not a list)")
    if features and "stac_version" not in data and not any(map(_looks_like_item, features)):
        raise RszError(f"{path}: a GeoJSON FeatureCollection, not a STAC ItemCollection (no stac_version)")
    found: list = []
    for index, feature in enumerate(features):
        item_id = feature.get("id") if isinstance(feature, dict) else None
        # the id names the item in errors.csv; one without (a malformed item) is named by its place
        name = item_id if isinstance(item_id, str) and item_id else f"features[{index}]"
        problem = _feature_problem(feature)
        if problem is None:
            try:
                found.append(pystac.Item.from_dict(feature, preserve_dict=False))
                continue
            except Exception as err:  # pystac raises KeyError, STACError, TypeError ... for malformed items
                problem = f"no {err.args[0]!r} field" if isinstance(err, KeyError) else first_line(err)
        found.append((f"{path}#{name}", f"STAC item {name}: {problem}"))
    return found


def _looks_like_item(feature) -> bool:
    from pystac.serialization import identify_stac_object_type

    try:
        return identify_stac_object_type(feature) == "Feature"
    except Exception:  # not an object, a stac_version that is no version
        return False


def _feature_problem(feature) -> str | None:
    """What pystac would stumble on in a feature with a message that names no field, else None."""
    if not isinstance(feature, dict):
        return f"not a JSON object (a {type(feature).__name__})"
    for key in ("properties", "assets"):
        if key in feature and not isinstance(feature[key], dict):
            return f"its {key!r} is not a JSON object"
    _mark_missing_hrefs(feature)
    return None


def _mark_missing_hrefs(item: dict) -> None:
    """Assets without a usable href get an empty one, marked NO_HREF: pystac refuses the whole item for any
    asset without href (KeyError 'href'), a thumbnail's too; stac_asset_hrefs refuses the asset only when it
    is the one to label, naming it."""
    assets = item.get("assets")
    if not isinstance(assets, dict):
        return
    for key, asset in assets.items():
        if not isinstance(asset, dict):
            assets[key] = {"href": "", NO_HREF: True}
        elif not isinstance(asset.get("href"), str) or not asset["href"]:
            # marked, not left empty: pystac makes an empty href absolute (the item's folder)
            asset.update(href="", **{NO_HREF: True})


def _catalog_items(pystac, stac_io, catalog) -> list:
    """The items of a catalog and its children, link by link: an item or child JSON that is missing or
    broken is an (href, problem) entry (a skipped row), so one bad file never costs the good items.
    A remote link is still refused as a whole (rsz downloads nothing: LocalStacIO refuses it)."""
    found: list = []
    seen: set[str] = set()  # a catalog that links back to itself is walked once

    def walk(parent) -> None:
        for link in parent.get_links():
            if link.rel not in ("item", "child"):
                continue
            href = str(link.get_absolute_href() or link.href)
            if href in seen:
                continue
            seen.add(href)
            try:
                target = link.resolve_stac_object(root=parent.get_root()).target
            except Exception as err:  # pystac raises many types for missing files and malformed JSON
                if stac_io.refused:
                    raise
                found.append((href, f"STAC {link.rel} {href}: {_link_problem(err)}"))
                continue
            if link.rel == "child" and isinstance(target, pystac.Catalog):
                walk(target)
            elif link.rel == "item" and isinstance(target, pystac.Item):
                found.append(target)
            else:
                found.append((href, f"STAC {link.rel} {href}: a {type(target).__name__}, not an {link.rel}"))

    walk(catalog)
    return found


def _link_problem(err: Exception) -> str:
    """Why a linked JSON could not be read: pystac's error ("does not resolve to a STAC object") hides
    whether the file is missing or broken; its cause says."""
    cause = err.__cause__ or err
    if isinstance(cause, FileNotFoundError):
        return "no such file"
    if isinstance(cause, KeyError):  # pystac's from_dict of an item without a field it needs
        return f"no {cause.args[0]!r} field"
    return f"not a readable STAC JSON ({first_line(cause)})"


def choose_asset(item, key: str | None) -> tuple[str, object]:
    """(key, asset) of the item to label: `key`, else the visual / RGB asset."""
    assets = item.assets
    if key is not None:
        if key not in assets:
            raise KeyError(f"no asset {key!r} (it has {', '.join(assets) or 'none'})")
        return key, assets[key]
    if not assets:
        raise KeyError("no assets")
    for name in VISUAL_KEYS:
        if name in assets:
            return name, assets[name]
    for name, asset in assets.items():
        if "visual" in (asset.roles or []):
            return name, asset
    images = [
        (n, a)
        for n, a in assets.items()
        if (a.media_type or "").split(";")[0] in IMAGE_MEDIA and not PREVIEW_ROLES & set(a.roles or [])
    ]
    if len(images) == 1:
        return images[0]
    raise KeyError(f"no visual asset; pass --asset with one of {', '.join(assets) or '(none)'}")


def _absolute_href(href: str, item) -> str:
    from pystac.utils import make_absolute_href

    from rsz_infer.images import is_gdal_path

    if is_gdal_path(href) or Path(href).is_absolute():
        return href
    return make_absolute_href(href, item.get_self_href())


def stac_asset_hrefs(path: Path, key: str | None) -> Iterator[tuple[str, str | None]]:
    """(raster href, None) for each item of a STAC JSON, or (item id, problem) for an item without one.

    A usage error when no item has the asset at all (a wrong --asset, most likely).
    """
    items = _items(path)
    if not items:
        raise RszError(f"{path}: the STAC JSON holds no items")
    found: list[tuple[str, str | None]] = []
    for item in items:
        if isinstance(item, tuple):  # an item JSON that could not be read: (its href, why)
            found.append(item)
            continue
        try:
            name, asset = choose_asset(item, key)
        except KeyError as err:
            if key is None and rgb_band_assets(item) is not None:
                found.append(_rgb_stack(path, item, found))
            else:
                found.append((f"{path}#{item.id}", f"STAC item {item.id}: {err.args[0]}"))
            continue
        if asset.extra_fields.get(NO_HREF):  # missing, empty or no string in the JSON
            found.append((f"{path}#{item.id}", f"STAC item {item.id}: asset {name!r} has no href"))
            continue
        href = _absolute_href(asset.href, item)
        if is_rgb_stack(href):  # rsz's own name for an item's bands, never an href to follow (more JSON)
            found.append((f"{path}#{item.id}", f"STAC item {item.id}: asset href {href} is not a raster"))
            continue
        found.append((href, None))
    if all(problem for _, problem in found):
        more = f" (and {len(found) - 1} more items)" if len(found) > 1 else ""
        raise RszError(f"{path}: {found[0][1]}{more}")
    yield from found


# ---------------------------------------------------------------- RGB in three band assets
# Landsat Collection 2 and many other items ship no picture asset, one asset per band instead (`red`,
# `green`, `blue`, `nir08` ...), each naming its band's common name (`eo:bands`, or STAC 1.1 `bands` with
# `eo:common_name`). Without --asset such an item is labeled in true colour: its red, green and blue assets
# read as one 3-band VRT (they must share CRS, transform, size and data type: rsz does not resample). The
# raster's name, `STAC_RGB:<the STAC JSON named, absolute>#<item id>`, is its tile id and path: it names the
# item (the same on every run, so a resumed run finds its tiles), and any process (a --ray decode task, a
# later --html report) rebuilds the VRT from it (images.open_raster), reading only the local JSON the user
# named and the three hrefs its assets name, as for any asset.
RGB_COMMON_NAMES = ("red", "green", "blue")


def _common_names(asset) -> list[str]:
    """The common names of an asset's bands: STAC 1.1 `bands`, else STAC 1.0 `eo:bands` (an item written for
    both lists each band in both)."""
    fields = asset.extra_fields
    if isinstance(fields.get("bands"), list):
        names = [b.get("eo:common_name") for b in fields["bands"] if isinstance(b, dict)]
    else:
        names = [b.get("common_name") for b in fields.get("eo:bands") or [] if isinstance(b, dict)]
    return [n for n in names if isinstance(n, str)]


def rgb_band_assets(item) -> list[tuple[str, object]] | None:
    """[(key, asset)] of the item's red, green and blue single-band assets, or None unless each colour is
    exactly one such asset (of two `red` assets, a DN and a reflectance product say, rsz picks none)."""
    found: dict[str, list] = {name: [] for name in RGB_COMMON_NAMES}
    for key, asset in item.assets.items():
        names = _common_names(asset)
        if len(names) == 1 and names[0] in found and not PREVIEW_ROLES & set(asset.roles or []):
            found[names[0]].append((key, asset))
    if all(len(assets) == 1 for assets in found.values()):
        return [found[name][0] for name in RGB_COMMON_NAMES]
    return None


def is_rgb_stack(name: str) -> bool:
    return name.startswith(RGB_STACK_PREFIX)


def rgb_stack_parts(name: str) -> tuple[str, str]:
    """(STAC JSON, item id) of a `STAC_RGB:` name; an item id never holds "#" (see _rgb_stack)."""
    json_path, _, item_id = name[len(RGB_STACK_PREFIX) :].rpartition("#")
    return json_path, item_id


def rgb_stack_vrt(name: str) -> str:
    """The VRT XML of a `STAC_RGB:` name: the item's three band assets as bands 1-3 (red, green, blue).

    RszError (one line naming the item) when the item or an asset cannot be read, or the three do not share
    CRS, transform, size and data type: rsz does not resample bands onto one grid (label one band with
    --asset, or make a VRT yourself with `gdalbuildvrt -separate -resolution highest`)."""
    json_path, item_id = rgb_stack_parts(name)
    try:
        stat = os.stat(json_path)
    except OSError as err:
        raise RszError(f"{name}: cannot read {json_path} ({err.strerror})") from None
    item = _items_by_id(json_path, stat.st_mtime_ns, stat.st_size).get(item_id)
    assets = rgb_band_assets(item) if item is not None else None
    if assets is None:
        raise RszError(f"{name}: {json_path} holds no item {item_id} with red, green and blue band assets")
    return _stack_vrt(item_id, tuple((key, _absolute_href(a.href, item)) for key, a in assets))


@functools.lru_cache(maxsize=4)
def _items_by_id(json_path: str, mtime_ns: int, size: int) -> dict:
    """The items of one STAC JSON by id, read once per process (and again when the file changes): every
    stack of a catalog is rebuilt from it."""
    items: dict = {}
    for item in _items(Path(json_path)):
        if not isinstance(item, tuple):
            items.setdefault(item.id, item)
    return items


def _rgb_stack(path: Path, item, found: list) -> tuple[str, str | None]:
    """(stack name, None) for an item labeled from its red, green and blue assets, or (the item, why not)."""
    name = f"{RGB_STACK_PREFIX}{path.resolve()}#{item.id}"
    # the name must find this item again (images.open_raster, in any process): an id with "#", or one that
    # two items of this JSON share, cannot
    if "#" in item.id:
        return (
            f"{path}#{item.id}",
            f"STAC item {item.id}: an id with '#' cannot name its bands; pass --asset KEY",
        )
    if any(href == name for href, _ in found):
        return (
            f"{path}#{item.id}",
            f"STAC item {item.id}: another item of {path} has this id; pass --asset KEY",
        )
    try:
        _stack_vrt(item.id, tuple((key, _absolute_href(a.href, item)) for key, a in rgb_band_assets(item)))
    except RszError as err:
        return f"{path}#{item.id}", str(err)
    return name, None


def _gdal_name(href: str) -> str:
    """The name GDAL itself opens for an href as rasterio takes it (https://... -> /vsicurl/https://...)."""
    try:
        from rasterio._path import _parse_path  # rasterio's own translation (private, stable since 1.3)
    except ImportError:
        return href
    return _parse_path(href).as_vsi()


@functools.lru_cache(maxsize=256)  # discovery checks the grid, then opens the stack: its bands' headers once
def _stack_vrt(item_id: str, bands: tuple[tuple[str, str], ...]) -> str:
    """The VRT XML of the (key, href) band assets as bands 1-3; RszError when they are not one grid."""
    from xml.sax.saxutils import escape

    import rasterio

    from rsz_infer.images import is_gdal_path, open_raster

    grids = []
    for key, href in bands:
        if is_rgb_stack(href):  # an asset naming another stack: not a raster (nor a way to read other JSON)
            raise RszError(f"STAC item {item_id}: asset {key} ({href}) is not a raster")
        if not is_gdal_path(href) and not Path(href).exists():
            raise RszError(f"STAC item {item_id}: asset {key}: no such file {href}")
        try:
            with open_raster(href) as ds:
                grids.append(
                    (_gdal_name(href), ds.crs, ds.transform, ds.width, ds.height, ds.dtypes[0], ds.nodata)
                )
                if ds.count != 1:
                    raise RszError(f"STAC item {item_id}: asset {key} has {ds.count} bands, not 1")
        except rasterio.errors.RasterioError as err:
            raise RszError(f"STAC item {item_id}: asset {key}: {first_line(err)}") from None
    _, crs, transform, width, height, dtype, _ = grids[0]
    first = bands[0][0]
    for (key, _), (_, c, t, w, h, d, _) in zip(bands[1:], grids[1:]):
        differ = [
            what
            for what, same in (
                (f"CRS {crs} vs {c}", c == crs),
                (f"size {width}x{height} vs {w}x{h}", (w, h) == (width, height)),
                ("transform", t == transform),
            )
            if not same
        ]
        if differ:
            keys = ", ".join(k for k, _ in bands)
            raise RszError(
                f"STAC item {item_id}: its {keys} assets are not on one grid ({first} and {key} differ in "
                f"{'; '.join(differ)}); rsz does not resample bands: label one with --asset KEY"
            )
        if d != dtype:
            raise RszError(
                f"STAC item {item_id}: asset {key} is {d}, {first} is {dtype} (one data type needed)"
            )
    xml = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        xml.append(f"<SRS>{escape(crs.to_wkt())}</SRS>")
    if crs is not None or not transform.is_identity:  # bands without georeferencing: a stack without too
        xml.append(f"<GeoTransform>{', '.join(repr(float(v)) for v in transform.to_gdal())}</GeoTransform>")
    vrt_type = {"uint8": "Byte"}.get(dtype, dtype.capitalize().replace("Uint", "UInt"))  # GDAL's type name
    for band, ((source, *_, nodata), colour) in enumerate(zip(grids, ("Red", "Green", "Blue")), 1):
        xml.append(f'<VRTRasterBand dataType="{vrt_type}" band="{band}">')
        xml.append(f"<ColorInterp>{colour}</ColorInterp>")
        if nodata is not None:
            xml.append(f"<NoDataValue>{nodata!r}</NoDataValue>")
        xml.append("<SimpleSource>")
        xml.append(f'<SourceFilename relativeToVRT="0">{escape(source)}</SourceFilename>')
        xml.append("<SourceBand>1</SourceBand>")
        xml.append("</SimpleSource></VRTRasterBand>")
    xml.append("</VRTDataset>")
    return "\n".join(xml)
