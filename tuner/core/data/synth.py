"""A synthetic Cityscapes-format dataset: street scenes drawn from polygons.

Real Cityscapes cannot be downloaded here, so this generator is the embedded default. Every
object is a polygon (exactly what `polygons.json` stores); label, instance and colour images are
rasterised from those polygons with the same PIL call the official `json2labelImg` uses, and the
RGB image is painted per class with texture, shading and noise so that a segmenter has to learn
appearance and shape rather than read colours. Thin classes (poles, signs, lights, bicycles)
make boundary quality matter, which is the seed's complaint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tuner.core.data.labels import LABEL_HAS_INSTANCES, LABEL_ID_BY_NAME, colorize_label_ids
from tuner.core.fsutil import file_lock, replace_dir, staging_dir

Polygon = list[tuple[float, float]]

CITIES = {"train": ("synthburg", "synthheim"), "val": ("synthstadt",), "test": ("synthdorf",)}
MANIFEST = "synth.json"

# Outlines in object units: x in [-0.5, 0.5] (times width), y in [-1, 0] (times height), base at 0.
_CAR = [
    (-0.5, 0),
    (-0.5, -0.5),
    (-0.42, -0.58),
    (-0.3, -0.95),
    (0.3, -0.95),
    (0.42, -0.58),
    (0.5, -0.5),
    (0.5, 0),
    (0.32, 0),
    (0.32, -0.06),
    (-0.32, -0.06),
    (-0.32, 0),
]
_BOX = [(-0.5, 0), (-0.5, -1), (0.5, -1), (0.5, 0)]
_TRUCK = [(-0.5, 0), (-0.5, -0.62), (-0.46, -1), (0.16, -1), (0.2, -0.62), (0.5, -0.62), (0.5, 0)]
_PERSON = [
    (-0.18, 0),
    (-0.08, -0.46),
    (0.0, -0.46),
    (0.08, 0),
    (0.24, 0),
    (0.16, -0.5),
    (0.3, -0.56),
    (0.26, -0.78),
    (0.12, -0.82),
    (0.14, -0.9),
    (0.08, -1.0),
    (-0.08, -1.0),
    (-0.14, -0.9),
    (-0.12, -0.82),
    (-0.26, -0.78),
    (-0.3, -0.56),
    (-0.16, -0.5),
    (-0.3, 0),
]
_RIDER = [
    (-0.3, -0.05),
    (-0.05, -0.4),
    (0.1, -0.45),
    (0.3, -0.6),
    (0.25, -0.8),
    (0.12, -0.84),
    (0.14, -0.92),
    (0.07, -1.0),
    (-0.07, -1.0),
    (-0.12, -0.92),
    (-0.1, -0.84),
    (-0.22, -0.72),
    (-0.2, -0.45),
    (-0.4, -0.1),
]
_BICYCLE = [
    (-0.5, -0.05),
    (-0.46, -0.4),
    (-0.3, -0.5),
    (-0.1, -0.38),
    (0.05, -0.75),
    (0.2, -0.75),
    (0.12, -0.5),
    (0.3, -0.5),
    (0.48, -0.4),
    (0.5, -0.05),
    (0.3, 0),
    (0.25, -0.3),
    (0.0, -0.12),
    (-0.25, -0.3),
    (-0.3, 0),
]
_MOTORCYCLE = [
    (-0.5, -0.05),
    (-0.45, -0.45),
    (-0.15, -0.55),
    (0.0, -0.9),
    (0.25, -0.85),
    (0.3, -0.5),
    (0.48, -0.45),
    (0.5, -0.05),
    (0.3, 0),
    (-0.3, 0),
]
_TRIANGLE = [(-0.5, 0), (0.0, -1), (0.5, 0)]


@dataclass(frozen=True)
class SynthSpec:
    """What `tuner data synth` makes; kept in synth.json so an unchanged set is not rebuilt."""

    train: int = 64
    val: int = 16
    test: int = 0
    height: int = 256
    width: int = 512
    seed: int = 0
    style: str = "default"  # see STYLES


@dataclass(frozen=True)
class Style:
    """How scenes look: camera, palette, light and texture. `default` is the embedded data
    set; `shifted` is the distribution the pretrained `sam_tiny` stand-in was trained on, so
    that fine-tuning on the default has a domain gap to close, as SA-1B -> Cityscapes has."""

    horizon: tuple[float, float] = (0.36, 0.5)  # fraction of the height; camera height
    object_scale: float = 1.0  # apparent size of things (a higher camera sees them smaller)
    palette_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to every base colour
    palette_seed: int | None = None  # per-class colour offsets drawn from this seed
    palette_spread: float = 0.0  # their size
    jitter_scale: float = 1.0  # per-object colour jitter
    texture_scale: float = 1.0  # amplitude of fine and coarse noise
    noise_cells: tuple[int, int] = (3, 24)  # fine and coarse noise cell sizes
    shade: tuple[float, float] = (0.8, 0.35)  # brightness = a + b * row / height
    brightness: tuple[float, float] = (0.75, 1.15)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour temperature
    sensor_noise: float = 5.0
    blur: float = 0.6

    def base_colors(self) -> dict[str, tuple[tuple[float, float, float], float]]:
        if self.palette_seed is None and not any(self.palette_shift) and self.jitter_scale == 1:
            return _BASE_COLORS
        rng = np.random.default_rng(self.palette_seed)
        out = {}
        for label, (mean, jitter) in _BASE_COLORS.items():
            offset = rng.uniform(-self.palette_spread, self.palette_spread, 3)
            shifted = np.clip(np.add(mean, offset) + self.palette_shift, 0, 255)
            out[label] = (tuple(float(v) for v in shifted), jitter * self.jitter_scale)
        return out


STYLES = {
    "default": Style(),
    "shifted": Style(
        horizon=(0.22, 0.36),
        object_scale=0.8,
        palette_shift=(12.0, -6.0, -18.0),
        palette_seed=7,
        palette_spread=35.0,
        jitter_scale=1.3,
        texture_scale=1.6,
        noise_cells=(2, 40),
        shade=(1.05, -0.3),
        brightness=(0.55, 1.3),
        tint=(1.1, 1.0, 0.85),
        sensor_noise=8.0,
        blur=1.0,
    ),
}


@dataclass
class _Object:
    label: str
    polygon: Polygon
    depth: float  # distance order: smaller is further away (drawn first)
    color: tuple[float, float, float]
    instance: int = 0  # 0: stuff


class _Scene:
    """One street scene: a horizon, a vanishing point and the objects standing on the ground."""

    def __init__(
        self, rng: np.random.Generator, height: int, width: int, style: Style = STYLES["default"]
    ) -> None:
        self.rng, self.h, self.w, self.style = rng, height, width, style
        self.colors = style.base_colors()
        self.horizon = height * rng.uniform(*style.horizon)
        self.vx = width * rng.uniform(0.38, 0.62)
        self.road_half = width * rng.uniform(0.35, 0.6)  # half width of the road at the bottom
        self.walk = width * rng.uniform(0.18, 0.35)  # sidewalk width at the bottom
        self.objects: list[_Object] = []
        self._instances: dict[str, int] = {}

    # Geometry -----------------------------------------------------------------------------
    def scale_at(self, y: float) -> float:
        """Perspective scale: 0 at the horizon, `object_scale` at the bottom row."""
        return max(0.0, (y - self.horizon) / (self.h - self.horizon)) * self.style.object_scale

    def road_edges(self, y: float) -> tuple[float, float]:
        s = self.scale_at(y)
        return self.vx - self.road_half * s, self.vx + self.road_half * s

    def add(self, label: str, polygon: Polygon, depth: float, color=None) -> None:
        instance = 0
        if LABEL_HAS_INSTANCES[LABEL_ID_BY_NAME[label]]:
            instance = self._instances.get(label, 0) + 1
            self._instances[label] = instance
        if color is None:
            color = _class_color(label, self.rng, self.colors)
        self.objects.append(_Object(label, polygon, depth, color, instance))

    def place(
        self,
        label: str,
        template: Polygon,
        x: float,
        y: float,
        w: float,
        h: float,
        mirror: bool = False,
        color=None,
    ) -> None:
        sign = -1.0 if mirror else 1.0
        poly = [(x + sign * px * w, y + py * h) for px, py in template]
        self.add(label, poly, depth=y, color=color)

    # Layers, back to front ------------------------------------------------------------------
    def build(self) -> None:
        rng, h, w, hz = self.rng, self.h, self.w, self.horizon
        self.add("sky", [(0, 0), (w, 0), (w, hz + 2), (0, hz + 2)], depth=-3)
        x = -rng.uniform(0, 30)
        while x < w:  # facades along the far end of the street
            bw = w * rng.uniform(0.07, 0.2)
            if rng.random() > 0.12:
                top = rng.uniform(0.04, 0.85) * hz
                self.add("building", [(x, top), (x + bw, top), (x + bw, hz + 3), (x, hz + 3)], -2)
            x += bw
        self.add("terrain", [(0, hz), (w, hz), (w, h), (0, h)], depth=-1.5)
        left, right = self.road_edges(h)
        for side in (-1, 1):
            edge = left if side < 0 else right
            outer = edge + side * self.walk
            self.add("sidewalk", [(self.vx, hz), (edge, h), (outer, h), (self.vx, hz)], -1.2)
            if rng.random() < 0.5:  # a strip of grass beyond the sidewalk, or a wall / fence
                far = outer + side * self.walk * 0.6
                self.add("terrain", [(self.vx, hz), (outer, h), (far, h)], -1.1)
        self.add("road", [(self.vx - 1, hz), (left, h), (right, h), (self.vx + 1, hz)], -1.0)
        for _ in range(rng.integers(0, 3)):
            self._wall_or_fence()
        for _ in range(rng.integers(2, 6)):
            self._tree()
        for _ in range(rng.integers(2, 6)):
            self._pole()
        for _ in range(rng.integers(2, 6)):
            self._vehicle()
        for _ in range(rng.integers(1, 5)):
            self._person()
        for _ in range(rng.integers(0, 3)):
            self._rider()
        if rng.random() < 0.5:  # the ego car's bonnet: void (label id 1), ignored in training
            top = h * rng.uniform(0.88, 0.95)
            self.add("ego vehicle", [(0, h), (w * 0.1, top), (w * 0.9, top), (w, h)], depth=1e9)

    def _ground_point(self, on: str) -> tuple[float, float]:
        """A random point on the road or on a sidewalk, returned as (x, y)."""
        y = self.rng.uniform(self.horizon + 0.06 * (self.h - self.horizon), self.h * 1.02)
        left, right = self.road_edges(y)
        s = self.scale_at(y)
        if on == "road":
            return self.rng.uniform(left + 0.1 * (right - left), right - 0.1 * (right - left)), y
        side = self.rng.choice([-1, 1])
        edge = left if side < 0 else right
        return edge + side * self.rng.uniform(0.2, 0.8) * self.walk * s, y

    def _wall_or_fence(self) -> None:
        rng, hz = self.rng, self.horizon
        x0 = rng.uniform(-0.1, 0.8) * self.w
        x1 = x0 + rng.uniform(0.1, 0.35) * self.w
        top = hz - rng.uniform(0.05, 0.2) * hz
        self.add(
            rng.choice(["wall", "fence"]),
            [(x0, top), (x1, top), (x1, hz + 4), (x0, hz + 4)],
            depth=-0.5,
        )

    def _tree(self) -> None:
        x, y = self._ground_point("sidewalk")
        s = max(self.scale_at(y), 0.08)
        trunk_w, trunk_h = 6 * s + 1, self.h * 0.45 * s + 4
        trunk = tuple(float(c) for c in self.rng.uniform([70, 50, 30], [110, 80, 55]))
        self.place("vegetation", _BOX, x, y, trunk_w, trunk_h, color=trunk)
        radius = self.w * 0.09 * s + 4
        cy = y - trunk_h - radius * 0.6
        angles = np.sort(self.rng.uniform(0, 2 * np.pi, 14))
        radii = radius * self.rng.uniform(0.7, 1.15, 14)
        blob = [(x + r * np.cos(a), cy + 0.8 * r * np.sin(a)) for a, r in zip(angles, radii)]
        self.add("vegetation", blob, depth=y - 0.01)

    def _pole(self) -> None:
        x, y = self._ground_point("sidewalk")
        s = max(self.scale_at(y), 0.08)
        pw, ph = max(1.5, 5 * s), self.h * (0.35 + 0.35 * s) + 6
        self.place("pole", _BOX, x, y, pw, ph)
        top = y - ph
        kind = self.rng.random()
        size = 14 * s + 4
        if kind < 0.45:
            shape = self.rng.choice(3)
            template = (_BOX, _TRIANGLE, _circle(12))[shape]
            self.place("traffic sign", template, x, top + size * 0.9, size, size)
        elif kind < 0.8:
            self.place("traffic light", _BOX, x, top + size * 2.2, size * 0.8, size * 2.2)

    def _vehicle(self) -> None:
        x, y = self._ground_point("road")
        s = max(self.scale_at(y), 0.05)
        kind = self.rng.choice(["car", "car", "car", "truck", "bus", "motorcycle"])
        width = self.w * 0.28 * s + 6
        if kind == "car":
            self.place("car", _CAR, x, y, width, width * 0.75)
        elif kind == "truck":
            self.place("truck", _TRUCK, x, y, width * 1.3, width * 1.3, self.rng.random() < 0.5)
        elif kind == "bus":
            self.place("bus", _BOX, x, y, width * 1.5, width * 1.15)
        else:
            self.place("motorcycle", _MOTORCYCLE, x, y, width * 0.45, width * 0.5)

    def _person(self) -> None:
        x, y = self._ground_point("sidewalk")
        s = max(self.scale_at(y), 0.06)
        height = self.h * 0.42 * s + 8
        self.place("person", _PERSON, x, y, height * 0.42, height, self.rng.random() < 0.5)

    def _rider(self) -> None:
        x, y = self._ground_point("road")
        s = max(self.scale_at(y), 0.06)
        bike = self.w * 0.12 * s + 6
        mirror = self.rng.random() < 0.5
        self.place("bicycle", _BICYCLE, x, y, bike, bike * 0.6, mirror)
        self.place("rider", _RIDER, x, y - bike * 0.3, bike * 0.7, bike * 1.1, mirror)


def _circle(n: int) -> Polygon:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [(0.5 * np.cos(a), -0.5 + 0.5 * np.sin(a)) for a in t]


# Appearance --------------------------------------------------------------------------------
_BASE_COLORS = {  # mean RGB and per-object jitter; deliberately not the label palette
    "sky": ((150, 185, 225), 25),
    "building": ((140, 128, 118), 45),
    "wall": ((170, 165, 150), 20),
    "fence": ((130, 105, 80), 25),
    "terrain": ((125, 140, 80), 20),
    "sidewalk": ((165, 160, 155), 15),
    "road": ((85, 85, 90), 12),
    "vegetation": ((60, 110, 45), 25),
    "pole": ((110, 110, 115), 20),
    "traffic sign": ((200, 60, 50), 60),
    "traffic light": ((40, 40, 35), 10),
    "car": ((120, 120, 130), 90),
    "truck": ((200, 200, 195), 40),
    "bus": ((200, 170, 40), 40),
    "motorcycle": ((60, 60, 80), 40),
    "bicycle": ((40, 40, 45), 20),
    "person": ((110, 90, 100), 60),
    "rider": ((180, 60, 50), 50),
    "ego vehicle": ((30, 35, 40), 10),
}
# How strongly each class is textured (amplitude of fine noise) and patterned.
_TEXTURE = {
    "vegetation": 55,
    "terrain": 30,
    "road": 14,
    "sidewalk": 10,
    "building": 12,
    "sky": 3,
    "fence": 25,
    "wall": 8,
}


def _class_color(label: str, rng: np.random.Generator, colors=None) -> tuple[float, float, float]:
    mean, jitter = (colors or _BASE_COLORS)[label]
    return tuple(float(np.clip(m + rng.normal(0, jitter), 0, 255)) for m in mean)


def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth value noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, (max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC))


def render(scene: _Scene) -> dict[str, np.ndarray | dict]:
    """Rasterise the scene: label ids, instance ids, colour, disparity, RGB and polygons."""
    h, w, rng, style = scene.h, scene.w, scene.rng, scene.style
    objects = sorted(scene.objects, key=lambda o: o.depth)
    labels = Image.new("L", (w, h), 0)
    segments = Image.new("I", (w, h), 0)  # index into `objects`, +1
    draw_l, draw_s = ImageDraw.Draw(labels), ImageDraw.Draw(segments)
    for index, obj in enumerate(objects):
        poly = [(float(x), float(y)) for x, y in obj.polygon]
        draw_l.polygon(poly, fill=LABEL_ID_BY_NAME[obj.label])
        draw_s.polygon(poly, fill=index + 1)
    label_ids = np.asarray(labels, dtype=np.uint8)
    segment = np.asarray(segments, dtype=np.int64)

    instance_ids = label_ids.astype(np.int32)
    instance_of = np.array([0] + [o.instance for o in objects])
    has_instance = instance_of[segment] > 0
    instance_ids[has_instance] = (
        instance_ids[has_instance] * 1000 + instance_of[segment][has_instance]
    )

    colors = np.array([(0, 0, 0)] + [o.color for o in objects], dtype=np.float32)
    image = colors[segment]
    rows = np.arange(h, dtype=np.float32)[:, None]
    cols = np.arange(w, dtype=np.float32)[None, :]
    fine = _noise(rng, h, w, style.noise_cells[0])
    coarse = _noise(rng, h, w, style.noise_cells[1])
    for label, amp in _TEXTURE.items():
        amp *= style.texture_scale
        mask = label_ids == LABEL_ID_BY_NAME[label]
        image[mask] += (amp * fine[mask] + 0.5 * amp * coarse[mask])[:, None]
    _paint_patterns(image, label_ids, segment, objects, rows, cols, scene)

    shade = style.shade[0] + style.shade[1] * rows / h  # default: darker far away
    image *= (shade * rng.uniform(*style.brightness))[..., None]
    image *= (rng.uniform(0.9, 1.1, 3) * style.tint)[None, None, :]  # white balance
    image += rng.normal(0, style.sensor_noise, image.shape)
    rgb = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(style.blur)
    )

    ground = np.clip((rows - scene.horizon) / (h - scene.horizon), 0, 1) * np.ones((1, w))
    depth_of = np.array([0.0] + [min(1.0, scene.scale_at(o.depth)) for o in objects])
    scale = np.where(np.isin(segment, _ground_segments(objects)), ground, depth_of[segment])
    disparity = np.where(label_ids == LABEL_ID_BY_NAME["sky"], 0, 1 + scale * 80 * 256)

    polygons = {
        "imgHeight": h,
        "imgWidth": w,
        "objects": [
            {"label": o.label, "polygon": [[round(x, 2), round(y, 2)] for x, y in o.polygon]}
            for o in objects
        ],
    }
    return {
        "image": np.asarray(rgb),
        "labelIds": label_ids,
        "instanceIds": instance_ids.astype(np.uint16),
        "color": colorize_label_ids(label_ids),
        "disparity": disparity.astype(np.uint16),
        "polygons": polygons,
    }


def _ground_segments(objects: list[_Object]) -> list[int]:
    flat = {"road", "sidewalk", "terrain"}
    return [i + 1 for i, o in enumerate(objects) if o.label in flat]


def _paint_patterns(image, label_ids, segment, objects, rows, cols, scene) -> None:
    """Class-specific structure: windows, lane marks, kerb tiles, fence lattice, car glass."""
    ids = LABEL_ID_BY_NAME
    windows = ((rows // 7) % 3 != 0) & ((cols // 6) % 3 != 0)
    building = (label_ids == ids["building"]) & windows & (rows < scene.horizon - 4)
    image[building] *= 0.62
    tiles = ((rows % 9) < 1) | ((cols % 15) < 1)
    image[(label_ids == ids["sidewalk"]) & tiles] *= 0.8
    lattice = ((rows + cols) % 7 < 2) | ((rows - cols) % 7 < 2)
    image[(label_ids == ids["fence"]) & ~lattice] *= 0.55
    # Dashed centre line and edge lines: painted on the road, still labelled road.
    s = np.clip((rows - scene.horizon) / (scene.h - scene.horizon), 0, 1)
    centre = np.abs(cols - scene.vx) < (1 + 3 * s)
    dashes = ((rows * (1.5 - s)) // 10) % 2 == 0
    image[(label_ids == ids["road"]) & centre & dashes] = (215, 215, 205)
    # Glass and tyres on vehicles: relative height inside each object's bounding box.
    tops = np.array([0] + [min(y for _, y in o.polygon) for o in objects], dtype=np.float32)
    bottoms = np.array([1] + [max(y for _, y in o.polygon) for o in objects], dtype=np.float32)
    rel = (rows - tops[segment]) / np.maximum(bottoms[segment] - tops[segment], 1)
    vehicles = np.isin(label_ids, [ids["car"], ids["bus"], ids["truck"]])
    image[vehicles & (rel > 0.12) & (rel < 0.42)] *= 0.45
    image[vehicles & (rel > 0.9)] *= 0.3
    people = np.isin(label_ids, [ids["person"], ids["rider"]])
    image[people & (rel < 0.2)] = (200, 160, 130)  # faces
    lights = label_ids == ids["traffic light"]
    lamp = ((rel * 3) % 1 > 0.25) & ((rel * 3) % 1 < 0.75)
    image[lights & lamp & (rel < 0.34)] = (230, 40, 30)
    image[lights & lamp & (rel > 0.66)] = (40, 220, 60)


def make_scene(
    seed: int, split: str, index: int, height: int, width: int, style: str = "default"
) -> dict:
    rng = np.random.default_rng([seed, ("train", "val", "test").index(split), index])
    scene = _Scene(rng, height, width, STYLES[style])
    scene.build()
    return render(scene)


def file_stem(split: str, index: int) -> tuple[str, str]:
    """(city, stem) named as Cityscapes names its files: city_seq_frame."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{19:06d}"


def generate(out_dir: str | Path, spec: SynthSpec, progress: bool = False) -> Path:
    """Write a Cityscapes-format dataset; built in a temporary folder, then moved into place."""
    out_dir = Path(out_dir)
    tmp = staging_dir(out_dir)
    try:
        counts = {"train": spec.train, "val": spec.val, "test": spec.test}
        for split, count in counts.items():
            for index in range(count):
                _write_sample(tmp, split, index, spec)
            if progress and count:
                print(f"  synth {split}: {count} images")
        (tmp / MANIFEST).write_text(json.dumps(asdict(spec), indent=2))
        replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_sample(root: Path, split: str, index: int, spec: SynthSpec) -> None:
    city, stem = file_stem(split, index)
    sample = make_scene(spec.seed, split, index, spec.height, spec.width, spec.style)
    img_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    disp_dir = root / "disparity" / split / city
    for d in (img_dir, gt_dir, disp_dir):
        d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample["image"]).save(img_dir / f"{stem}_leftImg8bit.png")
    Image.fromarray(sample["labelIds"]).save(gt_dir / f"{stem}_gtFine_labelIds.png")
    Image.fromarray(sample["instanceIds"]).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
    rgba = np.concatenate(
        [sample["color"], np.full((*sample["color"].shape[:2], 1), 255, np.uint8)], 2
    )
    Image.fromarray(rgba, mode="RGBA").save(gt_dir / f"{stem}_gtFine_color.png")
    (gt_dir / f"{stem}_gtFine_polygons.json").write_text(json.dumps(sample["polygons"]))
    Image.fromarray(sample["disparity"]).save(disp_dir / f"{stem}_disparity.png")


def ensure(out_dir: str | Path, spec: SynthSpec, progress: bool = True) -> Path:
    """Build the dataset unless an identical one (same manifest) is already there."""
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    # Several workers or machines may ask at once: one builds, the others wait and reuse it.
    with file_lock(out_dir.with_name(f".{out_dir.name}.lock")):
        if manifest.exists() and json.loads(manifest.read_text()) == asdict(spec):
            return out_dir
        if progress:
            print(f"Building the synthetic Cityscapes-format dataset in {out_dir} ...")
        return generate(out_dir, spec, progress=progress)


def embedded(folder: Path, spec: SynthSpec | None = None, progress: bool = True) -> Path:
    """The embedded default data set (or another spec), built once per spec under `folder`."""
    spec = spec or SynthSpec()
    name = f"synth-{spec.train}x{spec.val}x{spec.test}-{spec.height}x{spec.width}-s{spec.seed}"
    if spec.style != "default":
        name += f"-{spec.style}"
    return ensure(Path(folder) / name, spec, progress=progress)
