"""Parameters of the procedural grain generator (`GrainParams`), validated with messages naming the key."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pairforge.errors import PairforgeError, validation_problems


class GrainParams(BaseModel):
    """Knobs of the generator; every length in pixels (px) or micrometres (um) as named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pixel_size_um: float = Field(2.0, gt=0, le=100, description="lateral size of one pixel, um")
    # Grains.
    grain_area_fraction: float = Field(
        0.35, ge=0, le=0.5, description="share of the image covered by grains"
    )
    grain_median_diameter_px: float = Field(
        28.0, ge=3, le=400, description="median equivalent-circle diameter of grains, px"
    )
    grain_size_sigma: float = Field(
        0.35, ge=0, le=1.0, description="log-normal sigma of grain diameters"
    )
    grain_max_aspect: float = Field(
        1.7, ge=1, le=4, description="largest major/minor axis ratio of a grain"
    )
    grain_irregularity: float = Field(
        0.08, ge=0, le=0.25, description="amplitude of the outline's angular harmonics"
    )
    grain_protrusion_ratio: float = Field(
        0.3, gt=0, le=1.5, description="grain protrusion height / grain diameter (median)"
    )
    grain_gap_px: float = Field(
        2.0, ge=1, le=20, description="smallest binder gap between two grains, px"
    )
    wear_fraction: float = Field(0.3, ge=0, le=1, description="share of grains with a flat top")
    wear_level_range: tuple[float, float] = Field(
        (0.45, 0.75), description="plateau height / grain peak height, drawn uniformly, in (0, 1)"
    )
    # Pores.
    pore_fraction: float = Field(0.05, ge=0, le=0.3, description="share of the image in pores")
    pore_median_diameter_px: float = Field(
        16.0, ge=2, le=400, description="median equivalent diameter of pits, px"
    )
    pore_size_sigma: float = Field(0.5, ge=0, le=1.0, description="log-normal sigma of pits")
    pullout_share: float = Field(
        0.3, ge=0, le=1, description="share of pores that are sockets of pulled-out grains"
    )
    pore_depth_um: float = Field(6.0, gt=0, le=1000, description="median depth of a pit, um")
    # Binder surface.
    binder_roughness_um: float = Field(
        1.5, ge=0, le=1000, description="standard deviation of the binder height, um"
    )
    binder_correlation_px: float = Field(
        80.0, ge=4, le=5000, description="correlation length of the binder surface, px"
    )
    # Optics and sensor.
    light_azimuth_deg: float = Field(
        45.0, ge=-360, le=360, description="light direction, from +x (columns) toward +y (rows)"
    )
    light_elevation_deg: float = Field(45.0, gt=0, le=90, description="light elevation")
    albedo_binder: float = Field(0.3, ge=0, le=1)
    albedo_grain: float = Field(0.65, ge=0, le=1)
    albedo_pore: float = Field(0.12, ge=0, le=1)
    specular_strength: float = Field(0.5, ge=0, le=5, description="coaxial grain highlight")
    specular_shininess: float = Field(30.0, ge=1, le=1000)
    intensity_noise: float = Field(0.02, ge=0, le=1, description="sensor noise std, a.u.")
    depth_noise_um: float = Field(0.05, ge=0, le=100, description="sensor noise std, um")

    @model_validator(mode="after")
    def _check_combinations(self) -> GrainParams:
        low, high = self.wear_level_range
        if not 0 < low <= high < 1:
            raise ValueError(
                f"wear_level_range must satisfy 0 < low <= high < 1, got {self.wear_level_range}"
            )
        if self.grain_area_fraction + self.pore_fraction > 0.7:
            raise ValueError(
                "grain_area_fraction + pore_fraction must be <= 0.7 so the binder stays connected, "
                f"got {self.grain_area_fraction} + {self.pore_fraction}"
            )
        return self


def parse_grain_params(params: GrainParams | dict | None) -> GrainParams:
    """GrainParams from a GrainParams, a dict of overrides or None (defaults); PairforgeError if bad."""
    if params is None:
        return GrainParams()
    if isinstance(params, GrainParams):
        return params
    try:
        return GrainParams(**params)
    except ValidationError as err:
        # Python keyword arguments, so named as key=value.
        problems = "; ".join(
            f"{p.key}={p.got}: {p.message}" if p.got else f"{p.key or 'params'}: {p.message}"
            for p in validation_problems(err)
        )
        raise PairforgeError(
            f"bad grain generator parameter(s): {problems}. "
            "Fix the value(s); see pairforge.data.grains.GrainParams for names and ranges."
        ) from None
