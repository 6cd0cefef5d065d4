"""STAC inputs: an Item, an ItemCollection or a static catalog JSON names the rasters to label (pystac).

Each item contributes one asset: `--asset KEY`, or by default its visual / RGB asset. Relative asset
hrefs are resolved against the JSON that names them; absolute local paths, GDAL virtual paths and URLs
named by the user's JSON are handed to GDAL as written. pystac itself only ever reads local JSON here:
a catalog whose links point to remote JSON is refused rather than fetched (rsz downloads nothing).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from rsz_infer.errors import RszError, first_line
from rsz_infer.trust import check_regular_file

# The asset keys that mean "the picture of the scene" in common catalogs (Sentinel-2 L2A on Earth Search
# and Planetary Computer, Landsat, NAIP, Maxar open data), in order of preference.
VISUAL_KEYS = ("visual", "rgb", "image", "true_color", "tci", "TCI")
IMAGE_MEDIA = ("image/tiff", "image/jp2", "image/png", "image/jpeg", "application/x-geotiff")
# Pictures of an item that are not its data: a thumbnail or a tiler's rendered preview (a URL, downsampled,
# not georeferenced), never the default even when it is an item's only image
PREVIEW_ROLES = {"thumbnail", "overview"}


def is_stac_geojson(path: Path) -> bool:
    """A `.geojson` input that is a STAC Item or ItemCollection (a saved search often is named so); any other
    GeoJSON is left to GDAL, which says it is no raster."""
    try:
        check_regular_file(path)
        return b'"stac_version"' in path.read_bytes()
    except (OSError, RszError):  # unreadable: GDAL's open says why
        return False


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

    return pystac, LocalStacIO()


def _items(path: Path) -> list:
    from rsz_infer.images import is_gdal_path

    pystac, stac_io = _local_stac_io()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        kind = data.get("type")
        if kind == "FeatureCollection":
            collection = pystac.ItemCollection.from_dict(data, preserve_dict=False)
            items = list(collection.items)
            for item in items:  # relative asset hrefs are relative to the collection's file ...
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
    return f"not a readable STAC JSON ({first_line(cause)})"


def choose_asset(item, key: str | None) -> tuple[str, object]:
    """(key, asset) of the item to label: `key`, else the visual / RGB asset."""
    assets = item.assets
    if key is not None:
        if key not in assets:
            raise KeyError(f"no asset {key!r} (it has {', '.join(assets) or 'none'})")
        return key, assets[key]
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
            _, asset = choose_asset(item, key)
        except KeyError as err:
            found.append((f"{path}#{item.id}", f"STAC item {item.id}: {err.args[0]}"))
            continue
        found.append((_absolute_href(asset.href, item), None))
    if all(problem for _, problem in found):
        more = f" (and {len(found) - 1} more items)" if len(found) > 1 else ""
        raise RszError(f"{path}: {found[0][1]}{more}")
    yield from found
