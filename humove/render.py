"""Render SMPL-layout bodies as shaded, clothed meshes over a textured background (CPU, OpenCV + numpy).

Used to make demo videos from known motion, so a real person detector sees people and the motion stages can be
scored against the motion that drew them. Everything is in the camera frame with OpenCV axes (x right, y down,
z forward, metres) and a pinhole camera (`Camera`).

Rasterising is the painter's algorithm: faces turned away from the camera are dropped, the rest are drawn far to
near with `cv2.fillConvexPoly` (sub-pixel vertex positions), each with one Lambert-shaded colour. At 320×240 the
stand-in body (about 5,500 front faces) takes ~9 ms per frame on one idle core, the procedural room ~25 ms
(drawn once per shot unless the camera moves); a z-buffer would be exact where faces interpenetrate, but the
bodies here do not interpenetrate enough to show.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Colours are RGB uint8 triples.
Colour = tuple[int, int, int]
SUBPIXEL_BITS = 4  # cv2 drawing with fixed-point vertices: 1/16 pixel


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: image size in pixels, focal length in pixels, principal point (image centre if None)."""

    width: int
    height: int
    focal: float
    cx: float | None = None
    cy: float | None = None

    @property
    def principal_point(self) -> tuple[float, float]:
        return (self.width / 2 if self.cx is None else self.cx, self.height / 2 if self.cy is None else self.cy)

    def intrinsics(self) -> np.ndarray:
        """(3, 3) float32 matrix K."""
        cx, cy = self.principal_point
        return np.array([[self.focal, 0, cx], [0, self.focal, cy], [0, 0, 1]], np.float32)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) camera-frame points → (..., 2) pixels (x, y). Points must be in front (z > 0)."""
        points = np.asarray(points, np.float64)
        cx, cy = self.principal_point
        z = points[..., 2]
        return np.stack([cx + self.focal * points[..., 0] / z, cy + self.focal * points[..., 1] / z], axis=-1)


@dataclass(frozen=True)
class Clothing:
    """Colours of one person. Sleeves are short (forearms show skin) unless `long_sleeves`."""

    shirt: Colour = (40, 90, 170)
    trousers: Colour = (45, 45, 60)
    skin: Colour = (225, 180, 150)
    shoes: Colour = (30, 25, 25)
    hair: Colour = (50, 35, 25)
    long_sleeves: bool = False


# Body part of each SMPL joint: SMPL skins a limb's vertices mostly to the joint at the limb's near end
# (upper arm → shoulder, forearm → elbow), so the argmax of the skinning weights names the part.
_SKIN, _SHIRT, _TROUSERS, _SHOES, _SLEEVE = range(5)
_JOINT_PART = np.array(
    [_TROUSERS, _TROUSERS, _TROUSERS, _SHIRT, _TROUSERS, _TROUSERS, _SHIRT, _SHOES, _SHOES, _SHIRT, _SHOES, _SHOES,
     _SKIN, _SHIRT, _SHIRT, _SKIN, _SHIRT, _SHIRT, _SLEEVE, _SLEEVE, _SKIN, _SKIN, _SKIN, _SKIN]
)
_HEAD_JOINTS = (12, 15)


def face_colours(rest_vertices: np.ndarray, faces: np.ndarray, skin_weights: np.ndarray,
                 clothing: Clothing) -> np.ndarray:
    """Per-face RGB colours (F, 3) float32 of a clothed body from its rest pose (V, 3) (SMPL frame: y up,
    z forward), faces (F, 3) and skinning weights (V, 24): shirt, trousers, shoes and skin by body part, plus
    hair, eyes and a mouth on the head so the detector sees a face. Decided per face centre, so small features
    stay crisp."""
    rest = np.asarray(rest_vertices, np.float64)
    centre = rest[faces].mean(axis=1)  # (F, 3)
    joint = np.asarray(skin_weights)[faces].mean(axis=1).argmax(axis=1)
    part = _JOINT_PART[joint]
    # A belt line: the upper part of the pelvis region is the shirt's hem, the rest trousers.
    if (joint == 0).any():
        belt = centre[joint == 0, 1].mean() + 0.05
        part = np.where((joint == 0) & (centre[:, 1] > belt), _SHIRT, part)
    sleeve = clothing.shirt if clothing.long_sleeves else clothing.skin
    palette = np.array([clothing.skin, clothing.shirt, clothing.trousers, clothing.shoes, sleeve], np.float32)
    colours = palette[part]

    head = joint == 15
    if head.any():
        top, bottom = centre[head, 1].max(), centre[head, 1].min()
        mid_x, mid_z = centre[head, 0].mean(), centre[head, 2].mean()
        front = centre[head, 2].max()
        rel_y = (centre[:, 1] - bottom) / (top - bottom)  # 0 at the jaw, 1 at the crown
        rel_x = centre[:, 0] - mid_x
        facing = centre[:, 2] > mid_z + 0.6 * (front - mid_z)
        hair = head & ((rel_y > 0.75) | ((centre[:, 2] < mid_z) & (rel_y > 0.3)))
        eyes = head & facing & (np.abs(rel_y - 0.55) < 0.06) & (np.abs(np.abs(rel_x) - 0.035) < 0.015)
        mouth = head & facing & (np.abs(rel_y - 0.25) < 0.05) & (np.abs(rel_x) < 0.025)
        colours[hair] = clothing.hair
        colours[eyes] = (25, 20, 20)
        colours[mouth] = (150, 60, 60)
    return colours


@dataclass(frozen=True)
class Mesh:
    """One posed mesh in the camera frame: vertices (V, 3), faces (F, 3) int, face colours (F, 3) RGB."""

    vertices: np.ndarray
    faces: np.ndarray
    colours: np.ndarray


def render_meshes(background: np.ndarray, meshes: list[Mesh], camera: Camera,
                  light_direction: tuple[float, float, float] = (-0.35, -0.6, -0.7), ambient: float = 0.35
                  ) -> np.ndarray:
    """Draw `meshes` over `background` (H, W, 3) uint8 RGB → a new (H, W, 3) uint8 RGB image.

    `light_direction` points from the surface towards the light (camera frame; the default is above, left,
    behind the camera). Faces are culled when they face away from the camera or lie behind it (z < 0.05 m).
    """
    image = np.ascontiguousarray(background.copy())
    if not meshes:
        return image
    tris, colours = [], []
    for mesh in meshes:
        tri = np.asarray(mesh.vertices, np.float64)[mesh.faces]  # (F, 3, 3)
        tris.append(tri)
        colours.append(np.asarray(mesh.colours, np.float32))
    tri = np.concatenate(tris)
    colour = np.concatenate(colours)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    centroids = tri.mean(axis=1)
    keep = ((normals * centroids).sum(axis=1) < 0) & (tri[:, :, 2].min(axis=1) > 0.05)
    tri, colour, normals, depth = tri[keep], colour[keep], normals[keep], centroids[keep, 2]
    light = np.asarray(light_direction, np.float64)
    light /= np.linalg.norm(light)
    shade = ambient + (1 - ambient) * np.clip(normals @ light, 0.0, 1.0)
    shaded = np.clip(colour * shade[:, None], 0, 255).astype(np.int32)
    pixels = np.round(camera.project(tri) * (1 << SUBPIXEL_BITS)).astype(np.int32)  # (F, 3, 2)
    # Drop faces wholly outside the image (cheap, and keeps cv2's coordinates in range).
    scale = 1 << SUBPIXEL_BITS
    inside = ((pixels[..., 0].max(1) >= 0) & (pixels[..., 0].min(1) < camera.width * scale)
              & (pixels[..., 1].max(1) >= 0) & (pixels[..., 1].min(1) < camera.height * scale))
    order = np.argsort(-depth[inside], kind="stable")  # far first
    pixels, shaded = pixels[inside][order], shaded[inside][order].tolist()
    for points, rgb in zip(pixels, shaded, strict=True):
        cv2.fillConvexPoly(image, points, rgb, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    return image


def silhouette(meshes: list[Mesh], camera: Camera) -> np.ndarray:
    """(H, W) bool mask of the pixels the meshes cover (rendered on black with white faces)."""
    white = [Mesh(m.vertices, m.faces, np.full((len(m.faces), 3), 255.0, np.float32)) for m in meshes]
    black = np.zeros((camera.height, camera.width, 3), np.uint8)
    return render_meshes(black, white, camera, ambient=1.0)[..., 0] > 0


# Backgrounds ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scene:
    """A room seen by a level camera: a tiled floor and a wall `wall_distance` metres ahead, RGB colours."""

    floor: Colour
    floor_alt: Colour
    wall: Colour
    wall_alt: Colour
    camera_height: float = 0.95  # metres above the floor
    wall_distance: float = 7.0
    tile: float = 0.6  # floor tile side, metres
    brick: tuple[float, float] = (0.5, 0.25)  # wall pattern cell (width, height), metres
    seed: int = 0


def scene_background(scene: Scene, camera: Camera, camera_x: float = 0.0, time_s: float = 0.0) -> np.ndarray:
    """(H, W, 3) uint8 RGB background for a level camera at lateral position `camera_x` (metres), with a
    perspective-correct tiled floor, a patterned wall, soft light falloff and fixed per-scene noise.

    `time_s` drifts a faint light pattern across the wall, so even a static camera does not give a frozen image.
    """
    h, w = camera.height, camera.width
    cx, cy = camera.principal_point
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    # Rays through each pixel; the floor (y = camera_height in camera coordinates) where rays go down.
    ray_x, ray_y = (u - cx) / camera.focal, (v - cy) / camera.focal
    floor_z = np.where(ray_y > 1e-6, scene.camera_height / np.maximum(ray_y, 1e-6), np.inf)
    on_floor = floor_z < scene.wall_distance
    z = np.where(on_floor, floor_z, scene.wall_distance)
    world_x = ray_x * z + camera_x
    world_y = ray_y * z  # camera frame: down is positive
    image = np.empty((h, w, 3), np.float64)

    tile_x, tile_z = np.floor(world_x / scene.tile), np.floor(z / scene.tile)
    checker = ((tile_x + tile_z) % 2 == 0)[..., None]
    floor = np.where(checker, scene.floor, scene.floor_alt).astype(np.float64)
    # Grout lines between tiles.
    fx, fz = (world_x / scene.tile) % 1.0, (z / scene.tile) % 1.0
    grout = (np.minimum(fx, 1 - fx) < 0.03) | (np.minimum(fz, 1 - fz) < 0.03 * scene.tile / 0.6)
    floor[grout] *= 0.7
    floor *= (0.65 + 0.35 * np.clip(2.5 / z, 0, 1))[..., None]  # darker far away

    bw, bh = scene.brick
    row = np.floor((scene.camera_height - world_y) / bh)  # height above the floor, in brick rows
    offset = (row % 2) * 0.5 * bw
    column = np.floor((world_x + offset) / bw)
    cell = (row * 7 + column * 13) % 3
    wall = np.where((cell == 0)[..., None], scene.wall_alt, scene.wall).astype(np.float64)
    bx, by = ((world_x + offset) / bw) % 1.0, ((scene.camera_height - world_y) / bh) % 1.0
    mortar = (np.minimum(bx, 1 - bx) < 0.04) | (np.minimum(by, 1 - by) < 0.08)
    wall[mortar] = 0.6 * wall[mortar] + 0.4 * 200
    glow = 0.85 + 0.15 * np.cos(0.9 * world_x - 0.6 * time_s)
    wall *= glow[..., None]
    image = np.where(on_floor[..., None], floor, wall)

    # Per-scene noise fixed to the world (so it moves with the camera): fine grain plus blotches.
    rng = np.random.default_rng(scene.seed)
    grain = rng.normal(0, 1, (64, 256))
    gi = (np.floor(world_x * 40).astype(np.int64) % 256, np.floor((world_y + z) * 40).astype(np.int64) % 64)
    image += 9.0 * grain[gi[1], gi[0]][..., None]
    blotch = rng.normal(0, 1, (16, 64))
    bi = (np.floor(world_x * 4).astype(np.int64) % 64, np.floor((world_y + z) * 4).astype(np.int64) % 16)
    image *= (1 + 0.06 * blotch[bi[1], bi[0]])[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def draw_box_truck(image: np.ndarray, left: float, top: float, width: float, height: float,
                   colour: Colour = (200, 200, 205)) -> np.ndarray:
    """Draw a side view of a box truck (cargo box, cab, wheels) in place; returns (H, W) bool of the pixels it
    covers. `left`, `top`, `width`, `height` in pixels (the truck's bounding box, wheels included)."""
    mask = np.zeros(image.shape[:2], np.uint8)
    wheel_r = 0.11 * height
    body_bottom = top + height - wheel_r
    cab_w = 0.25 * width

    def rect(x0, y0, x1, y1, rgb, target):
        cv2.rectangle(target, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))), rgb, -1)

    for target, cargo, cab, window, wheel in ((image, colour, (170, 40, 40), (90, 130, 160), (20, 20, 20)),
                                              (mask, 1, 1, 1, 1)):
        rect(left, top, left + width - cab_w, body_bottom, cargo, target)
        rect(left + width - cab_w, top + 0.3 * height, left + width, body_bottom, cab, target)
        if target is image:
            rect(left + width - 0.8 * cab_w, top + 0.36 * height, left + width - 0.1 * cab_w, top + 0.55 * height,
                 window, target)
            for stripe in np.linspace(top + 0.15 * height, body_bottom - 0.1 * height, 4):
                cv2.line(image, (int(left + 4), int(stripe)), (int(left + width - cab_w - 4), int(stripe)),
                         (150, 150, 160), 2)
        for wx in (left + 0.2 * width, left + 0.82 * width):
            cv2.circle(target, (int(round(wx)), int(round(body_bottom))), int(round(wheel_r)), wheel, -1)
    return mask.astype(bool)


def draw_bicycle(image: np.ndarray, camera: Camera, centre_x: float, depth: float, floor_y: float,
                 colour: Colour = (30, 110, 60)) -> None:
    """Draw a bicycle seen from the side in place: standing on the floor (`floor_y` metres below the camera) at
    camera-frame (x, z) = (`centre_x`, `depth`), 1.7 m long (wheels of 0.68 m) and 1.05 m high, parallel to the
    image plane. An object as wide as a standing person is tall, for tests of wide scenes."""
    def px(x: float, height: float) -> tuple[int, int]:
        u, v = camera.project(np.array([centre_x + x, floor_y - height, depth]))
        return int(round(u)), int(round(v))

    radius = 0.34
    metre = camera.focal / depth
    thick = max(1, int(round(0.035 * metre)))
    rear, front = px(-0.52, radius), px(0.52, radius)
    crank, seat, bars = px(-0.05, 0.3), px(-0.25, 0.9), px(0.42, 1.05)
    head = px(0.4, 0.8)
    for hub in (rear, front):
        cv2.circle(image, hub, int(round(radius * metre)), (25, 25, 25), thick + 1, lineType=cv2.LINE_AA)
        for angle in np.linspace(0, np.pi, 4, endpoint=False):
            dx, dy = radius * metre * np.cos(angle), radius * metre * np.sin(angle)
            cv2.line(image, (int(hub[0] - dx), int(hub[1] - dy)), (int(hub[0] + dx), int(hub[1] + dy)),
                     (150, 150, 150), 1, lineType=cv2.LINE_AA)
    for a, b in ((rear, crank), (crank, seat), (seat, rear), (seat, head), (crank, head), (head, front),
                 (head, bars)):
        cv2.line(image, a, b, colour, thick, lineType=cv2.LINE_AA)
    saddle = px(-0.25, 0.93)
    cv2.line(image, (saddle[0] - int(0.1 * metre), saddle[1]), (saddle[0] + int(0.08 * metre), saddle[1]),
             (20, 20, 20), thick + 1)
