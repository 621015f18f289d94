"""The built-in accelerator catalog: it loads, and its figures survive independent checks."""

from __future__ import annotations

import pytest

from hardware.catalog import get_accelerator, list_accelerators, load_catalog
from hardware.spec import AcceleratorSpec

EXPECTED_NAMES = {
    "a100-40gb-sxm",
    "a100-80gb-sxm",
    "h100-sxm",
    "h100-pcie",
    "h200",
    "b200",
    "l40s",
    "mi300x",
    "cpu-generic",
}
GPU_NAMES = sorted(EXPECTED_NAMES - {"cpu-generic"})
ALL_NAMES = sorted(EXPECTED_NAMES)


def test_catalog_holds_exactly_the_expected_parts() -> None:
    assert set(load_catalog()) == EXPECTED_NAMES
    assert list_accelerators() == ALL_NAMES


@pytest.mark.parametrize("name", ALL_NAMES)
def test_entry_validates_and_round_trips(name: str) -> None:
    spec = get_accelerator(name)
    assert spec.name == name
    assert AcceleratorSpec.model_validate(spec.model_dump()) == spec


@pytest.mark.parametrize("name", ALL_NAMES)
def test_entry_cites_sources(name: str) -> None:
    sources = get_accelerator(name).sources
    assert sources, f"{name} has no sources"
    for source in sources:
        figure, sep, where = source.partition(":")
        assert sep and figure.strip() and where.strip(), (
            f"{name}: {source!r} is not 'figure: where'"
        )


@pytest.mark.parametrize("name", GPU_NAMES)
def test_ridge_point_is_plausible(name: str) -> None:
    # FLOP per byte of HBM at which bf16 GEMMs turn compute-bound. A sparse figure or a
    # GB/s-vs-TB/s slip moves it out of this band.
    spec = get_accelerator(name)
    ridge = spec.peak_flops_per_s("bf16") / spec.hbm_bytes_per_s
    assert 50 <= ridge <= 700, f"{name}: ridge {ridge:.0f} FLOP/B"


@pytest.mark.parametrize("name", ALL_NAMES)
def test_precision_ladder_is_monotonic(name: str) -> None:
    tflops = get_accelerator(name).peak_tflops
    assert tflops["tf32"] >= tflops["fp32"]
    assert tflops["bf16"] >= tflops["tf32"]
    if "fp8" in tflops:
        assert tflops["fp8"] >= tflops["bf16"]
    if "int8" in tflops:
        assert tflops["int8"] >= tflops["bf16"]


@pytest.mark.parametrize("name", GPU_NAMES)
def test_gpu_fp16_matches_bf16_and_rates_are_dense(name: str) -> None:
    spec = get_accelerator(name)
    assert spec.peak_tflops["fp16"] == spec.peak_tflops["bf16"]
    # Dense bf16 per board watt tops out near 2.25 (B200, H100 PCIe); a sparse figure doubles it.
    assert spec.peak_tflops["bf16"] / spec.tdp_w < 3.0


@pytest.mark.parametrize("name", ALL_NAMES)
def test_links_power_and_price_are_consistent(name: str) -> None:
    spec = get_accelerator(name)
    assert spec.network_gb_per_s <= spec.intra_node_gb_per_s
    if name in GPU_NAMES:
        assert spec.intra_node_gb_per_s >= spec.pcie_gb_per_s
    assert 0.05 * spec.tdp_w <= spec.idle_w < 0.5 * spec.tdp_w
    assert spec.price_per_hour_usd > 0


def test_h100_sxm_matches_datasheet_anchors() -> None:
    spec = get_accelerator("h100-sxm")
    assert spec.peak_tflops["bf16"] == pytest.approx(989, rel=1e-3)
    assert spec.peak_tflops["fp8"] == pytest.approx(1979, rel=1e-3)
    assert spec.hbm_tb_per_s == 3.35
    assert 78 <= spec.memory_gib <= 80  # "80 GB" part; the runtime sees a little less
    assert spec.intra_node_gb_per_s == 450  # NVLink 900 GB/s bidirectional
    assert spec.network_gb_per_s == 50  # 400 Gb/s NDR per GPU
    assert spec.tdp_w == 700
    assert spec.devices_per_node == 8


def test_same_silicon_has_same_compute() -> None:
    assert get_accelerator("h200").peak_tflops == get_accelerator("h100-sxm").peak_tflops
    assert (
        get_accelerator("a100-80gb-sxm").peak_tflops == get_accelerator("a100-40gb-sxm").peak_tflops
    )
    assert get_accelerator("h200").hbm_tb_per_s > get_accelerator("h100-sxm").hbm_tb_per_s


def test_missing_dtype_falls_back_to_bf16() -> None:
    a100 = get_accelerator("a100-80gb-sxm")
    assert "fp8" not in a100.peak_tflops
    assert a100.peak_flops_per_s("fp8") == a100.peak_flops_per_s("bf16") == 312e12


def test_unknown_name_error_lists_known_names() -> None:
    with pytest.raises(KeyError) as info:
        get_accelerator("h100")
    message = str(info.value)
    assert "unknown accelerator 'h100'" in message
    for name in ALL_NAMES:
        assert name in message


@pytest.mark.parametrize("spelling", ["H100-SXM", "H100-sxm", " h100-sxm "])
def test_lookup_is_case_insensitive(spelling: str) -> None:
    assert get_accelerator(spelling) is get_accelerator("h100-sxm")


def test_load_catalog_returns_an_independent_copy() -> None:
    first = load_catalog()
    first.pop("h100-sxm")
    first["fake"] = first["h200"]
    assert set(load_catalog()) == EXPECTED_NAMES
