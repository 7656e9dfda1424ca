"""The generator of procedural grinding-tool surface measurements (intensity + depth, binder/grain/pore masks).

Real grain measurements are not public, so this module imitates them, deterministically by seed:

* depth (um): a smooth random binder surface; abrasive grains as irregular superellipse blobs with
  log-normal equivalent diameters, protruding from the binder as domes, a share of them worn to a
  flat plateau (an absolute height, as grinding wears grains against a common plane); pores as
  depressions in the binder: shallow pits and deeper sockets of pulled-out grains.
* intensity (a.u.): material albedo (binder dark, grains bright, pores darker) times Lambertian
  shading of the depth gradient under an oblique light, plus a coaxial specular term on grains
  (flat wear tops shine, as under the coaxial light of optical surface measurement), plus
  Gaussian sensor noise. Depth gets its own sensor noise.
* mask (uint8): binder 0, grain 1, pore 2.

Placement: grains are placed at random positions until their covered area reaches the requested
fraction. A grain that would touch an earlier one (closer than `grain_gap_px`) is moved to a new
random position (same size and shape, up to `_PLACEMENT_TRIES` times, so the size distribution
is not biased toward small grains); grains therefore never overlap and stay separate connected
components. Pores are placed on binder (their center never lies on a grain; pixels under grains
stay grain) and may overlap each other, until the pore area reaches its fraction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import gamma as gamma_function

from pairforge.data.grain_params import GrainParams, parse_grain_params
from pairforge.errors import PairforgeError

# Mask class ids of the generated measurements.
BINDER, GRAIN, PORE = 0, 1, 2

# A drawn grain tries this many random positions before it is given up (keeps large grains).
_PLACEMENT_TRIES = 30
# Stop drawing after this many grains/pores per expected object, so impossible targets end.
_MAX_DRAWS_PER_EXPECTED = 20
# Share of light that reaches every surface regardless of its slope (inter-reflections).
_AMBIENT = 0.25

# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, height: int, width: int, correlation_px: float):
    """Zero-mean, unit-std Gaussian random field (H, W) float32 with the given correlation length.

    Filtered on a coarse grid and spline-upsampled, so cost does not grow with the correlation
    length, and cubic interpolation keeps the gradient smooth (the shading would show a bilinear grid).
    """
    step = max(1, int(correlation_px // 4))
    coarse_shape = (height // step + 4, width // step + 4)
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, sigma=correlation_px / step / 2, mode="wrap")
    field = ndimage.zoom(coarse, step, order=3, mode="reflect")[:height, :width]
    field = field - field.mean(dtype=np.float64)
    std = field.std(dtype=np.float64)
    return (field / std if std > 0 else field).astype(np.float32, copy=False)


@dataclass(frozen=True)
class _Blob:
    """Irregular rotated superellipse of a given equivalent diameter (px)."""

    diameter_px: float
    aspect: float  # major / minor axis
    angle: float  # rad
    exponent: float  # superellipse exponent, 2 = ellipse, larger = boxier
    harmonic_amplitudes: np.ndarray  # (K,) relative radius perturbation of orders 2..K+1
    harmonic_phases: np.ndarray  # (K,)

    @staticmethod
    def draw(rng: np.random.Generator, diameter_px, max_aspect, irregularity) -> _Blob:
        orders = np.arange(2, 6)
        amplitudes = irregularity * rng.standard_normal(orders.size) / (orders - 1)
        # Keep the radius positive everywhere: cap the total perturbation at 50%.
        total = np.abs(amplitudes).sum()
        if total > 0.5:
            amplitudes *= 0.5 / total
        return _Blob(
            diameter_px=float(diameter_px),
            aspect=float(rng.uniform(1.0, max_aspect)),
            angle=float(rng.uniform(0, math.pi)),
            exponent=float(rng.uniform(2.0, 3.5)),
            harmonic_amplitudes=amplitudes,
            harmonic_phases=rng.uniform(0, 2 * math.pi, orders.size),
        )

    def axes(self) -> tuple[float, float]:
        """Semi-axes (a, b) in px, scaled so the superellipse area equals pi (d/2)^2."""
        p = self.exponent
        unit_area = 4 * gamma_function(1 + 1 / p) ** 2 / gamma_function(1 + 2 / p)
        scale = math.sqrt(math.pi / unit_area) * self.diameter_px / 2
        return scale * math.sqrt(self.aspect), scale / math.sqrt(self.aspect)

    def max_radius(self) -> float:
        a, _ = self.axes()
        # A superellipse reaches 2^(1/2 - 1/p) a on its diagonal.
        corner = 2 ** (0.5 - 1 / self.exponent)
        return a * corner * (1 + np.abs(self.harmonic_amplitudes).sum())

    def polar(self, center_y: float, center_x: float, shape: tuple[int, int], margin_px: float):
        """Bounding box and polar coordinates around the blob, clipped to the image.

        Returns (box (slice, slice), rho (h, w) distance to the center in px, outline_radius (h, w)
        px: pixel is inside where rho < outline_radius, u (h, w) coordinate along the major axis),
        or None if the box lies outside the image.
        """
        reach = self.max_radius() + margin_px + 1
        y0, y1 = max(0, int(center_y - reach)), min(shape[0], int(center_y + reach) + 2)
        x0, x1 = max(0, int(center_x - reach)), min(shape[1], int(center_x + reach) + 2)
        if y0 >= y1 or x0 >= x1:
            return None
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - center_y)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - center_x)[None, :]
        cos_a, sin_a = math.cos(self.angle), math.sin(self.angle)
        u = dx * cos_a + dy * sin_a
        v = dy * cos_a - dx * sin_a
        rho = np.hypot(u, v)
        theta = np.arctan2(v, u)
        a, b = self.axes()
        p = self.exponent
        outline = (np.abs(np.cos(theta) / a) ** p + np.abs(np.sin(theta) / b) ** p) ** (-1 / p)
        perturbation = np.ones_like(theta)
        for order, amplitude, phase in zip(
            range(2, 2 + self.harmonic_amplitudes.size),
            self.harmonic_amplitudes,
            self.harmonic_phases,
            strict=True,
        ):
            perturbation += amplitude * np.cos(order * theta + phase)
        return (slice(y0, y1), slice(x0, x1)), rho, outline * perturbation, u


def _lognormal(rng: np.random.Generator, median: float, sigma: float, low: float) -> float:
    return max(low, median * math.exp(sigma * rng.standard_normal()))


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------


def _place_grains(rng, params: GrainParams, depth, albedo, grain_mask, binder) -> dict:
    """Add non-overlapping grains to depth / albedo / grain_mask in place; returns counts."""
    height, width = depth.shape
    target_px = params.grain_area_fraction * height * width
    keepout = np.zeros((height, width), dtype=bool)
    mean_area = math.pi / 4 * params.grain_median_diameter_px**2
    mean_area *= math.exp(2 * params.grain_size_sigma**2)
    max_draws = _MAX_DRAWS_PER_EXPECTED * int(target_px / mean_area + 1) + 10
    covered_px, num_grains, num_worn, num_draws = 0, 0, 0, 0
    while covered_px < target_px and num_draws < max_draws:
        num_draws += 1
        diameter = _lognormal(rng, params.grain_median_diameter_px, params.grain_size_sigma, 3.0)
        blob = _Blob.draw(rng, diameter, params.grain_max_aspect, params.grain_irregularity)
        peak_um = (
            params.grain_protrusion_ratio * diameter * params.pixel_size_um * rng.uniform(0.7, 1.3)
        )
        dome_exponent = rng.uniform(0.35, 0.7)
        tilt = rng.uniform(-0.3, 0.3)
        worn = rng.random() < params.wear_fraction
        wear_level = rng.uniform(*params.wear_level_range)
        albedo_factor = rng.uniform(0.8, 1.2)
        for _ in range(_PLACEMENT_TRIES):
            center_y, center_x = rng.uniform(0, height), rng.uniform(0, width)
            if keepout[int(center_y), int(center_x)]:
                continue
            polar = blob.polar(center_y, center_x, (height, width), params.grain_gap_px)
            if polar is None:
                continue
            box, rho, outline, u = polar
            inside = rho < outline
            if not inside.any() or (keepout[box] & inside).any():
                continue
            # Dome (1 - s^2)^e, tilted a little along the major axis so tops are not all central.
            s2 = np.minimum((rho / outline) ** 2, 1.0)
            relief = peak_um * (1 - s2) ** dome_exponent * (1 + tilt * u / outline)
            surface = binder[box] + relief
            if worn:
                # Flat wear top at an absolute height: grinding levels grains against one plane.
                plateau = binder[int(center_y), int(center_x)] + wear_level * peak_um
                surface = np.minimum(surface, plateau)
                num_worn += 1
            depth[box] = np.where(inside, surface, depth[box])
            albedo[box] = np.where(inside, params.albedo_grain * albedo_factor, albedo[box])
            grain_mask[box] |= inside
            keepout[box] |= rho < outline + params.grain_gap_px
            covered_px += int(inside.sum())
            num_grains += 1
            break
    return {"grains_placed": num_grains, "grains_worn": num_worn, "grain_px": covered_px}


def _place_pores(rng, params: GrainParams, depth, albedo, grain_mask, pore_mask, binder) -> dict:
    """Carve pits and pulled-out grain sockets into the binder in place; returns counts."""
    height, width = depth.shape
    target_px = params.pore_fraction * height * width
    mean_area = math.pi / 4 * params.pore_median_diameter_px**2
    max_draws = _MAX_DRAWS_PER_EXPECTED * int(target_px / mean_area + 1) + 10
    covered_px, num_pores, num_draws = 0, 0, 0
    while covered_px < target_px and num_draws < max_draws:
        num_draws += 1
        pullout = rng.random() < params.pullout_share
        if pullout:
            diameter = _lognormal(
                rng, params.grain_median_diameter_px, params.grain_size_sigma, 3.0
            )
            # A socket is as deep as the embedded part of the lost grain.
            depth_um = params.grain_protrusion_ratio * diameter * params.pixel_size_um
            depth_um *= rng.uniform(0.5, 1.0)
            profile_exponent = 0.5
        else:
            diameter = _lognormal(rng, params.pore_median_diameter_px, params.pore_size_sigma, 2.0)
            depth_um = params.pore_depth_um * math.exp(0.3 * rng.standard_normal())
            profile_exponent = 0.8
        blob = _Blob.draw(rng, diameter, params.grain_max_aspect, params.grain_irregularity * 1.5)
        for _ in range(_PLACEMENT_TRIES):
            center_y, center_x = rng.uniform(0, height), rng.uniform(0, width)
            if not grain_mask[int(center_y), int(center_x)]:
                break
        else:
            continue
        polar = blob.polar(center_y, center_x, (height, width), 0.0)
        if polar is None:
            continue
        box, rho, outline, _ = polar
        carved = (rho < outline) & ~grain_mask[box]
        s2 = np.minimum((rho / outline) ** 2, 1.0)
        floor = binder[box] - depth_um * (1 - s2) ** profile_exponent
        # Overlapping pores: the deeper one wins.
        depth[box] = np.where(carved, np.minimum(depth[box], floor), depth[box])
        albedo[box] = np.where(carved, params.albedo_pore, albedo[box])
        covered_px += int((carved & ~pore_mask[box]).sum())
        pore_mask[box] |= carved
        num_pores += 1
    return {"pores_placed": num_pores, "pore_px": covered_px}


def _shade(depth: np.ndarray, albedo: np.ndarray, grain_mask: np.ndarray, params: GrainParams):
    """Noise-free intensity (H, W) float32 from depth (um) and albedo."""
    # Surface slope in um/um; the normal is (-dz/dx, -dz/dy, 1) normalized.
    slope_y, slope_x = np.gradient(depth, params.pixel_size_um)
    normal_z = 1.0 / np.sqrt(1.0 + slope_x**2 + slope_y**2)
    azimuth = math.radians(params.light_azimuth_deg)
    elevation = math.radians(params.light_elevation_deg)
    light_x = math.cos(elevation) * math.cos(azimuth)
    light_y = math.cos(elevation) * math.sin(azimuth)
    light_z = math.sin(elevation)
    lambert = np.clip(normal_z * (light_z - slope_x * light_x - slope_y * light_y), 0, None)
    intensity = albedo * (_AMBIENT + (1 - _AMBIENT) * lambert)
    # Coaxial highlight: strongest where the grain surface faces the camera (wear flats).
    intensity += grain_mask * (params.specular_strength * normal_z**params.specular_shininess)
    return intensity.astype(np.float32, copy=False)


def seed_sequence(seed: int | Sequence[int]) -> list[int]:
    """A seed (non-negative int or sequence of them) as a list for `np.random.default_rng`."""
    values = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    if not values or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in values):
        raise PairforgeError(
            f"seed must be a non-negative integer or a sequence of them, got {seed!r}"
        )
    return [int(v) for v in values]


def generate_measurement_with_info(
    height: int,
    width: int,
    params: GrainParams | dict | None = None,
    seed: int | Sequence[int] = 0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Like `generate_measurement`, plus a dict of what was placed (counts, pixels, seconds)."""
    params = parse_grain_params(params)
    if not (isinstance(height, int) and isinstance(width, int) and height >= 8 and width >= 8):
        raise PairforgeError(
            f"measurement size must be integers >= 8 px, got height={height!r}, width={width!r}"
        )
    start = time.perf_counter()
    rng = np.random.default_rng(seed_sequence(seed))
    # Two scales of binder relief: long waves plus a finer texture.
    binder = _smooth_field(rng, height, width, params.binder_correlation_px)
    binder += 0.35 * _smooth_field(rng, height, width, max(4.0, params.binder_correlation_px / 8))
    binder *= np.float32(params.binder_roughness_um / math.hypot(1.0, 0.35))
    depth = binder.copy()
    albedo = np.full((height, width), params.albedo_binder, dtype=np.float32)
    grain_mask = np.zeros((height, width), dtype=bool)
    pore_mask = np.zeros((height, width), dtype=bool)
    info = _place_grains(rng, params, depth, albedo, grain_mask, binder)
    info |= _place_pores(rng, params, depth, albedo, grain_mask, pore_mask, binder)
    del binder
    intensity = _shade(depth, albedo, grain_mask, params)
    del albedo
    if params.intensity_noise > 0:
        intensity += params.intensity_noise * rng.standard_normal(depth.shape, dtype=np.float32)
    if params.depth_noise_um > 0:
        depth += params.depth_noise_um * rng.standard_normal(depth.shape, dtype=np.float32)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[pore_mask] = PORE
    mask[grain_mask] = GRAIN
    image = np.stack([intensity, depth]).astype(np.float32, copy=False)
    info["seconds"] = time.perf_counter() - start
    return image, mask, info


def generate_measurement(
    height: int,
    width: int,
    params: GrainParams | dict | None = None,
    seed: int | Sequence[int] = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic grinding-tool surface measurement.

    Args:
        height, width: size in px (>= 8).
        params: GrainParams, a dict of overrides, or None for the defaults.
        seed: non-negative int or sequence of ints (e.g. (dataset_seed, index)); same seed,
            same arrays.

    Returns:
        image: float32 (2, H, W): channel 0 intensity (a.u., about 0..1.2), channel 1 depth (um,
            zero-mean binder, grains up, pores down).
        mask: uint8 (H, W): binder 0, grain 1, pore 2.
    """
    image, mask, _ = generate_measurement_with_info(height, width, params, seed)
    return image, mask
