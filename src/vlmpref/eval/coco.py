"""COCO-style ground truth: the objects of an image from COCO's instances and captions annotation files.

    coco = load_coco("instances_val2014.json", "captions_val2014.json")
    coco.lookup(image_id=139)        # {"objects": ["person", "tv", ...], "captions": ["A woman stands ...", ...]}

As CHAIR defines them, the objects of an image are its segmentation labels (category names of its instance
annotations) plus the objects named in its reference captions; the captions are kept as text, so each reading
(vlmpref's, chair_compat) finds the objects in them its own way. POPE asks about segmentation labels as present
objects and never asks about a caption object as absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from vlmpref.errors import VlmprefError


@dataclass
class CocoAnnotations:
    """Per image id: category names (annotation order, each once), reference captions and the file name."""

    images: dict[int, dict] = field(default_factory=dict)
    by_file: dict[str, int] = field(default_factory=dict)

    def lookup(self, image_id=None, file_name: str | None = None) -> dict | None:
        """{"objects", "captions"} of an image given by id (int or digits) or file name; None when unknown."""
        key = None
        if image_id is not None:
            try:
                key = int(image_id)
            except (TypeError, ValueError):
                key = None
        if key is None and file_name:
            key = self.by_file.get(PurePath(str(file_name)).name)
        entry = self.images.get(key) if key is not None else None
        if entry is None:
            return None
        return {"objects": list(entry["objects"]) if entry["has_instances"] else [],
                "captions": list(entry["captions"])}

    def __len__(self) -> int:
        return len(self.images)


def _read(path: str, what: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise VlmprefError(f"COCO {what} file {path} does not exist; check the path given to --coco-{what}.")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise VlmprefError(f"COCO {what} file {path} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                           f"give the {what}_*.json file of a COCO annotation download.") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise VlmprefError(f"COCO {what} file {path} has no 'annotations' list; give the {what}_*.json file of a "
                           "COCO annotation download.")
    return data


def load_coco(instances: str | None = None, captions: str | None = None) -> CocoAnnotations:
    """Read COCO instances and/or captions JSON files into per-image objects and captions."""
    if not instances and not captions:
        raise VlmprefError("No COCO annotations given; pass --coco-instances and/or --coco-captions.")
    coco = CocoAnnotations()

    def entry(image_id: int) -> dict:
        return coco.images.setdefault(image_id, {"objects": [], "captions": [], "has_instances": bool(instances)})

    for path, what in ((instances, "instances"), (captions, "captions")):
        if not path:
            continue
        data = _read(path, what)
        for image in data.get("images", []):
            if isinstance(image, dict) and "id" in image:
                entry(int(image["id"]))
                if image.get("file_name"):
                    coco.by_file[PurePath(image["file_name"]).name] = int(image["id"])
        if what == "instances":
            names = {c.get("id"): c.get("name") for c in data.get("categories", []) if isinstance(c, dict)}
            if not names:
                raise VlmprefError(f"COCO instances file {path} has no 'categories'; give an instances_*.json file.")
        for k, annotation in enumerate(data["annotations"]):
            key = "category_id" if what == "instances" else "caption"
            if not isinstance(annotation, dict) or "image_id" not in annotation or key not in annotation:
                raise VlmprefError(f"Annotation {k} of COCO {what} file {path} has no image_id or {key}; give an "
                                   f"unmodified {what}_*.json file.")
            image = entry(int(annotation["image_id"]))
            if what == "instances":
                name = names.get(annotation["category_id"])
                if name is None:
                    raise VlmprefError(f"Annotation {k} of {path} names category {annotation['category_id']}, "
                                       "which its 'categories' list does not hold.")
                if name not in image["objects"]:
                    image["objects"].append(name)
            else:
                image["captions"].append(str(annotation["caption"]))
    return coco
