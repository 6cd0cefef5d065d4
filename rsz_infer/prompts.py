"""Prompt ensembles for CLIP bundles (class_embedding "templates"): a class is the mean of its prompts.

A class's embedding is the L2-normalised mean of the L2-normalised text embeddings of every template
filled with the class name (underscores read as spaces) and, when the class file gives one, with its
description too (CLIP, Radford et al. 2021, Sec. 3.1.4: ensembling over prompts in embedding space).

DEFAULT_TEMPLATES are written for rsz after the remote-sensing template lists that the CLIP authors
published with their zero-shot evaluation (the RESISC45 and EuroSAT lists in openai/CLIP's
data/prompts.md: "satellite imagery of {}.", "aerial photo of {}.", ...) and RemoteCLIP's zero-shot
prompt "a satellite photo of {}." (Liu et al. 2024, IEEE TGRS). `rsz-export clip --templates FILE`
replaces them (one template with one `{}` per line, `#` comments).
"""

from __future__ import annotations

from pathlib import Path

from rsz_infer.classfile import ClassEntry
from rsz_infer.errors import RszError

DEFAULT_TEMPLATES = (
    "a satellite photo of {}.",
    "a satellite image of {}.",
    "satellite imagery of {}.",
    "an aerial photograph of {}.",
    "an aerial image of {}.",
    "aerial imagery of {}.",
    "an aerial view of {}.",
    "a satellite view of {}.",
    "a remote sensing image of {}.",
    "a high-resolution satellite image of {}.",
    "an overhead photo of {}.",
    "a top-down view of {}.",
)


def check_template(template: str, where: str) -> str:
    if (
        template.count("{}") != 1
        or template.replace("{}", "").count("{")
        or "}" in template.replace("{}", "")
    ):
        raise RszError(f"{where}: a template needs exactly one {{}} and no other braces, got {template!r}")
    return template


def read_templates(path: Path | str) -> list[str]:
    """A templates file: one template with one `{}` per line; blank lines and `#` lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RszError(f"{path}: templates file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RszError(f"{path}: cannot read the templates file ({err})") from None
    templates = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            templates.append(check_template(line, f"{path}:{number}"))
    if not templates:
        raise RszError(f"{path}: no templates (one per line, each with one {{}})")
    return templates


def class_phrases(entry: ClassEntry) -> list[str]:
    """What fills the templates for a class: its name as words, and its description when it has one."""
    name = " ".join(entry.name.replace("_", " ").split())
    description = " ".join(entry.description.replace("_", " ").split())
    return [name] if description.casefold() == name.casefold() else [name, description]


def class_prompts(entry: ClassEntry, templates: list[str] | tuple[str, ...]) -> list[str]:
    return [template.replace("{}", phrase) for phrase in class_phrases(entry) for template in templates]
