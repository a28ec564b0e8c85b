"""The bit arithmetic of cuda/include/flashcore/fp8.cuh, modelled in torch over every FP8 code:
e5m2 is the high byte of an fp16, and an fp16 moved to bf16 by keeping its exponent field
(``(h & 0x8000) | ((h >> 3) & 0x0fff)``) is the value times 2^-112 (kBf16FromFp16Unscale)."""

import pytest
import torch

CODES = torch.arange(256, dtype=torch.int32).to(torch.uint8)
UNSCALE = 2.0 ** 112  # kBf16FromFp16Unscale


def _finite(fp8):
    values = CODES.view(fp8).float()
    return values, torch.isfinite(values)


def _scaled_bf16_from_half(h16: torch.Tensor) -> torch.Tensor:
    """fp8.cuh's half2_to_scaled_bf16x2 on one 16-bit lane."""
    h = h16.to(torch.int32) & 0xFFFF
    bits = (h & 0x8000) | ((h >> 3) & 0x0FFF)
    return bits.to(torch.int16).view(torch.bfloat16)


def test_e5m2_is_the_high_byte_of_an_fp16():
    values, ok = _finite(torch.float8_e5m2)
    as_half = (CODES.to(torch.int32) << 8).to(torch.int16).view(torch.float16).float()
    assert torch.equal(as_half[ok], values[ok])


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_fp16_to_bf16_by_the_exponent_field_is_exact_times_2_to_the_minus_112(fp8):
    values, ok = _finite(fp8)
    half = values.to(torch.float16)  # exact: every FP8 value is an fp16
    assert torch.equal(half.float()[ok], values[ok])
    widened = _scaled_bf16_from_half(half.view(torch.int16)).double() * UNSCALE
    assert torch.equal(widened[ok], values.double()[ok])


def test_the_packed_pair_form_keeps_lanes_apart():
    """The 32-bit form masks what the shift moves across the lane boundary (and the signs)."""
    values, ok = _finite(torch.float8_e4m3fn)
    h = values[ok].to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF
    lo, hi = h, h.flip(0)
    word = lo | (hi << 16)
    packed = (word & 0x80008000) | ((word >> 3) & 0x0FFF0FFF)
    for lane, src in ((packed & 0xFFFF, lo), ((packed >> 16) & 0xFFFF, hi)):
        assert torch.equal(lane, _scaled_bf16_from_half(src).view(torch.int16).to(torch.int64) & 0xFFFF)
