"""A model's output classes: id, name and display colour (RGB); the paper's CARLA classes
with CARLA's palette; and the CLASSES.json list a publisher passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple

from .card_fields import as_list, fail

MAX_CLASSES = 255  # ids 0..254: 255 stays free to mark "no class" in a uint8 class map


@dataclass(frozen=True)
class ClassInfo:
    """One output class: its id in the class map, its name and its display colour (RGB)."""

    id: int
    name: str
    color: Tuple[int, int, int]

    def __post_init__(self) -> None:
        if not isinstance(self.id, int) or isinstance(self.id, bool) or not 0 <= self.id <= 255:
            raise fail(f"class id {self.id!r}; expected an integer 0..255")
        if not isinstance(self.name, str) or not self.name:
            raise fail(f"class {self.id} name {self.name!r}; expected a non-empty string")
        color = tuple(self.color)
        if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
            raise fail(f"class {self.name!r} colour {self.color!r}; expected three integers 0..255")
        object.__setattr__(self, "color", color)


# The paper's 13 CARLA categories, in its order, with CARLA's palette (ids as in the labels).
CARLA_CLASSES: Tuple[ClassInfo, ...] = tuple(
    ClassInfo(i, n, c)
    for i, (n, c) in enumerate(
        [
            ("Unlabeled", (0, 0, 0)),
            ("Building", (70, 70, 70)),
            ("Fence", (190, 153, 153)),
            ("Other", (250, 170, 160)),
            ("Pedestrian", (220, 20, 60)),
            ("Pole", (153, 153, 153)),
            ("RoadLine", (157, 234, 50)),
            ("Road", (128, 64, 128)),
            ("Sidewalk", (244, 35, 232)),
            ("Vegetation", (107, 142, 35)),
            ("Car", (0, 0, 142)),
            ("Wall", (102, 102, 156)),
            ("TrafficSign", (220, 220, 0)),
        ]
    )
)


def classes_from_json(entries: Any, where: str = "classes") -> Tuple["ClassInfo", ...]:
    """Classes from a CLASSES.json list: [{"name": ..., "colour": [r, g, b]}, ...] in id order.

    "color" is accepted for "colour", and an "id" must then equal the entry's position.
    """
    if not isinstance(entries, (list, tuple)) or not 1 <= len(entries) <= MAX_CLASSES:
        raise fail(f"{where}: expected a list of 1..{MAX_CLASSES} {{\"name\", \"colour\"}} objects")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping) or "name" not in e or not ({"colour", "color"} & set(e)):
            raise fail(f"{where}[{i}]: expected {{\"name\": ..., \"colour\": [r, g, b]}}")
        extra = sorted(set(e) - {"id", "name", "colour", "color"})
        if extra:
            raise fail(f"{where}[{i}] has unknown fields {extra}")
        if e.get("id", i) != i:
            raise fail(f"{where}[{i}] has id {e['id']!r}; ids are positions 0..n-1")
        colour = e["colour"] if "colour" in e else e["color"]
        out.append(ClassInfo(i, e["name"], tuple(as_list(colour, f"{where}[{i}] colour"))))
    return tuple(out)
