import pytest
import torch

from coa_lora.quant.packing import pack_bits, packed_nbytes, unpack_bits


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 1003])
def test_round_trip_and_size(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(n, bits)
    assert packed.numel() * 8 - n * bits < 8 * bits  # padding is less than one group
    assert torch.equal(unpack_bits(packed, bits, n), codes)


def test_layout_is_msb_first():
    # 4-bit: first code in the high nibble (bitsandbytes' layout); 3-bit: 8 codes fill 3 bytes big-endian.
    assert pack_bits(torch.tensor([1, 2]), 4).tolist() == [0x12]
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b01101100]
    codes = torch.tensor([7, 0, 0, 0, 0, 0, 0, 1])
    assert pack_bits(codes, 3).tolist() == [0b11100000, 0, 0b00000001]


def test_bad_input():
    with pytest.raises(ValueError, match="bits must be one of"):
        pack_bits(torch.zeros(4, dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 4)
