"""Named evaluation protocols: lmbench's own and the ones used by the papers it compares to.

A protocol fixes every choice that changes an NME number (see reference section 6): the
regressor (ridge with a lambda relative to max(X^T X), with or without bias, or plain least
squares), the coordinate space the regressor works in, the test crop the dataset must have
used, which splits fit and test, and the seeded subsets of the N sweep (Table II of Li et al.).

Presets (``get_protocol(name)``):

``lmbench`` (default)
    ridge, lambda 1e-4 relative, with bias, input-image pixels, fixed crop. Leak-free.
``sanchez`` (alias ``li``)
    Sanchez & Tzimiropoulos 2019 / Li et al. 2020: ridge on mean-centred data (= with bias),
    lambda 1e-4 relative, 32-px heatmap coordinates, test images cropped with their own
    ground-truth box (LEAKS test annotations into the input).
``sanchez_fixed``
    the Sanchez regressor with the fixed crop: separates the regressor from the leak.
``jakab``
    Jakab et al. 2018: ridge with alpha 0 (= least squares), no intercept, input pixels
    (128 px in the original), fixed resize and centre crop.
``zhang``
    Zhang et al. 2018: least squares ``W = X \\ Y`` without bias, coordinates in [0,1] - 0.5,
    fixed crop.
``mallis``
    Mallis et al.: ridge lambda 1e-3 relative (with bias, like Sanchez's centred form),
    full-resolution original-image coordinates, 10 seeded repeats of each subset size. The
    reference gives no crop for it; lmbench uses the fixed crop.

Where lmbench differs from the originals on purpose: subsets are seeded (Sanchez's are not),
errors are always measured in input pixels (or original-image pixels for ``original``), and
heatmap coordinates are continuous (pixel centres at +0.5), which differs from Sanchez's
index coordinates by a constant shift that a regressor with bias absorbs.
"""

from __future__ import annotations

import dataclasses

from lmbench.config import ProtocolConfig

REGRESSORS = ("ridge", "lstsq")
COORDINATES = ("pixels", "heatmap", "normalized", "unit_centered", "original")
TEST_CROPS = ("fixed", "gt_box")
LEAKING_CROPS = ("gt_box",)
SPLITS = ("train", "reg_train", "test")

PRESETS: dict[str, ProtocolConfig] = {
    "lmbench": ProtocolConfig(),
    "sanchez": ProtocolConfig(
        name="sanchez", regressor="ridge", ridge_lambda=1e-4, bias=True, coordinates="heatmap", heatmap_size=32,
        test_crop="gt_box",
    ),
    "sanchez_fixed": ProtocolConfig(
        name="sanchez_fixed", regressor="ridge", ridge_lambda=1e-4, bias=True, coordinates="heatmap",
        heatmap_size=32, test_crop="fixed",
    ),
    "jakab": ProtocolConfig(name="jakab", regressor="lstsq", ridge_lambda=0.0, bias=False, coordinates="pixels"),
    "zhang": ProtocolConfig(name="zhang", regressor="lstsq", ridge_lambda=0.0, bias=False, coordinates="unit_centered"),
    "mallis": ProtocolConfig(
        name="mallis", regressor="ridge", ridge_lambda=1e-3, bias=True, coordinates="original", repeats=10,
    ),
}
ALIASES = {"li": "sanchez", "default": "lmbench"}


def protocol_names() -> list[str]:
    return [*PRESETS, *ALIASES]


def get_protocol(name: str) -> ProtocolConfig:
    """A fresh copy of the named preset; an unknown name is an error listing the valid ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PRESETS:
        raise ValueError(f"unknown protocol {name!r}; valid: {', '.join(protocol_names())}")
    return dataclasses.replace(PRESETS[key])


def validate_protocol(protocol: ProtocolConfig) -> None:
    """Raise ValueError naming the first invalid setting of ``protocol``."""
    checks = (
        ("regressor", protocol.regressor, REGRESSORS),
        ("coordinates", protocol.coordinates, COORDINATES),
        ("test_crop", protocol.test_crop, TEST_CROPS),
        ("fit_split", protocol.fit_split, SPLITS),
        ("test_split", protocol.test_split, SPLITS),
    )
    for key, value, valid in checks:
        if value not in valid:
            raise ValueError(f"protocol {protocol.name!r}: unknown {key} {value!r}; valid: {', '.join(valid)}")
    if protocol.fit_split == protocol.test_split:
        raise ValueError(f"protocol {protocol.name!r}: fit_split and test_split are both {protocol.fit_split!r}")
    if protocol.ridge_lambda < 0:
        raise ValueError(f"protocol {protocol.name!r}: ridge_lambda must be >= 0, got {protocol.ridge_lambda}")
    if protocol.repeats < 1:
        raise ValueError(f"protocol {protocol.name!r}: repeats must be >= 1, got {protocol.repeats}")
    if protocol.heatmap_size < 1:
        raise ValueError(f"protocol {protocol.name!r}: heatmap_size must be >= 1, got {protocol.heatmap_size}")
    if any(int(n) < 1 for n in protocol.sweep_sizes):
        raise ValueError(f"protocol {protocol.name!r}: sweep_sizes must be >= 1, got {list(protocol.sweep_sizes)}")


def leaks(protocol: ProtocolConfig | dict) -> bool:
    """Whether the protocol crops test images with their own annotations."""
    crop = protocol["test_crop"] if isinstance(protocol, dict) else protocol.test_crop
    return crop in LEAKING_CROPS


def describe(protocol: ProtocolConfig | dict) -> str:
    """One line a reader can check against a paper, e.g. for report headers."""
    p = protocol if isinstance(protocol, dict) else dataclasses.asdict(protocol)
    if p["regressor"] == "ridge" and p["ridge_lambda"] > 0:
        regressor = f"ridge lambda {p['ridge_lambda']:g}*max(C)"
    else:
        regressor = "least squares"
    space = f"heatmap {p.get('heatmap_size', 32)}-px" if p["coordinates"] == "heatmap" else p["coordinates"]
    crop = "GT-box test crop (leaks test annotations)" if leaks(p) else f"{p['test_crop']} test crop"
    return (f"{p['name']}: {regressor}, {'with' if p['bias'] else 'no'} bias, {space} coordinates, {crop}, "
            f"fit {p['fit_split']} / test {p['test_split']}")


def crop_dataset_options(options: dict, test_crop: str) -> dict:
    """Dataset options that make a prepared dataset (lmbench.prepare) apply ``test_crop``:
    ``protocol=gt_box`` for the leaking crop (images without landmarks, which it cannot crop,
    left out: evaluation reads only the annotated splits), the dataset's own default crop for ``fixed``."""
    options = dict(options)
    if test_crop == "gt_box":
        options["protocol"] = "gt_box"
        options["annotated_only"] = True
    else:
        options.pop("protocol", None)
    return options
