"""The embedded benchmark: procedural remote-sensing scenes built from visual attributes.

catalogue.py (attributes, classes, descriptions, splits), rendering.py (one tile), captions.py, writing.py
(the folder); the `rsz-train synth` command is in rsz_train/cli.py.

No real remote-sensing data can be fetched where rsz is developed, so this package draws a zero-shot problem
worth solving: 42 scene classes named after UCM / AID / NWPU-RESISC45 categories, each a set of the 46
visual attributes below (ground-cover materials, shapes and structures, layout and density). Every
attribute is one consistent primitive (a texture, a colour, a shape) and a tile draws its class's
attributes with instance variation (position, rotation, scale, counts, colours, illumination, noise, now
and then an attribute of another class), so classes are confusable in pairs yet learnable. Unseen classes
are new combinations of attributes that training classes carry, so zero-shot transfer has to go through
the semantic side. Each tile gets five captions describing its own instance (what, where, how many).

`write_benchmark` writes the layout of docs/DESIGN.md ("Embedded benchmark on disk"), the same layout a
user's real data can take, so one loader (rsz_train.data.formats) serves both:

    DIR/images/<class>/<class>_<NNNN>.png   (class names use underscores: dense_residential)
    DIR/classes.txt  attributes.txt  attribute_matrix.csv  captions.json  synth.json
    DIR/splits/<split>/{seen,unseen,val}.txt and {train,val_seen,val_unseen,test_seen,test_unseen}.txt

Splits: the three seen/unseen ratios of the RSSDIVCS papers (60/10, 50/20, 40/30 of 70 classes) scaled to
42 classes; each carves validation classes (a sixth of the seen side) out of training for model selection:

    zsl_36_6   36 seen (30 train + 6 val), 6 unseen   <- DEFAULT_SPLIT, the 60/10 ratio
    zsl_30_12  30 seen (25 train + 5 val), 12 unseen  (50/20)
    zsl_24_18  24 seen (20 train + 4 val), 18 unseen  (40/30)

Class lists are fixed (chosen once by a seeded search so that every attribute, hence every attribute of
every unseen and val class, is carried by some training class); per-image lists come from
formats.make_split (holdout 0.2 of each training class for val_seen and again for test_seen).

Every tile is drawn from its own seed (seed, class, index), so output bytes do not depend on `workers`.
"""

from rsz_train.data.synth.captions import NOUNS, NUMBER_WORDS, captions_for
from rsz_train.data.synth.catalogue import (
    ATTRIBUTE_INDEX,
    ATTRIBUTES,
    CLASS_NAMES,
    CLASSES,
    COVER,
    DEFAULT_SPLIT,
    GENERATOR_VERSION,
    LAYOUT,
    SPLIT_SIZES,
    STRUCTURE,
    Attribute,
    attribute_matrix,
    class_description,
    class_splits,
)
from rsz_train.data.synth.rendering import render_tile
from rsz_train.data.synth.writing import write_benchmark

__all__ = [
    "ATTRIBUTES", "ATTRIBUTE_INDEX", "CLASSES", "CLASS_NAMES", "COVER", "DEFAULT_SPLIT", "GENERATOR_VERSION",
    "LAYOUT", "NOUNS", "NUMBER_WORDS", "SPLIT_SIZES", "STRUCTURE", "Attribute", "attribute_matrix",
    "captions_for", "class_description", "class_splits", "render_tile", "write_benchmark",
]  # fmt: skip
