"""Packing weights into one buffer per dtype: round trip, zero-copy views, transport shape."""

import pickle

import numpy as np
import pytest
import torch

from memrl.weights import PackedWeights, TensorSpec, pack_state_dict, unpack


def mixed_state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(5, 3, generator=generator),
        "norm.weight": torch.randn(3, generator=generator).to(torch.bfloat16),
        "proj.weight": torch.randn(2, 3, generator=generator).to(torch.float16),
        "proj.bias": torch.randn(2, generator=generator),
        "step": torch.tensor(7, dtype=torch.int64),
    }


def test_round_trip_keeps_names_dtypes_shapes_and_bits():
    state = mixed_state_dict()
    packed = pack_state_dict(state, version=3)
    restored = unpack(packed)
    assert packed.version == 3
    assert list(restored) == list(state)
    for name, tensor in state.items():
        assert restored[name].dtype == tensor.dtype, name
        assert restored[name].shape == tensor.shape, name
        assert torch.equal(restored[name], tensor), name


def test_one_contiguous_buffer_per_dtype_with_exact_offsets():
    packed = pack_state_dict(mixed_state_dict())
    assert sorted(packed.buffers) == ["bfloat16", "float16", "float32", "int64"]
    for buffer in packed.buffers.values():
        assert buffer.ndim == 1 and buffer.flags.c_contiguous
    # float32: embed (15 elements) then proj.bias (2) in state-dict order.
    assert packed.buffers["float32"].shape == (17,)
    specs = {spec.name: spec for spec in packed.meta}
    assert (specs["embed.weight"].offset, specs["embed.weight"].numel) == (0, 15)
    assert (specs["proj.bias"].offset, specs["proj.bias"].numel) == (15, 2)
    # bfloat16 travels as int16 bits: 3 elements x 2 bytes.
    assert packed.buffers["bfloat16"].dtype == np.int16
    assert packed.nbytes == 17 * 4 + 3 * 2 + 6 * 2 + 1 * 8


def test_unpack_returns_views_not_copies():
    packed = pack_state_dict(mixed_state_dict())
    restored = unpack(packed)
    packed.buffers["float32"][15] = 42.0  # first element of proj.bias
    assert restored["proj.bias"][0].item() == 42.0
    base = packed.buffers["float32"].ctypes.data
    assert restored["proj.bias"].data_ptr() == base + 15 * 4


def test_packed_buffers_own_their_memory():
    state = mixed_state_dict()
    packed = pack_state_dict(state)
    state["embed.weight"].zero_()
    assert unpack(packed)["embed.weight"].abs().sum() > 0


def test_tied_tensors_are_stored_once_and_share_memory():
    embedding = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    state = {"embed.weight": embedding, "lm_head.weight": embedding, "b": torch.ones(1)}
    packed = pack_state_dict(state)
    assert packed.buffers["float32"].shape == (7,)
    restored = unpack(packed)
    assert restored["lm_head.weight"].data_ptr() == restored["embed.weight"].data_ptr()
    assert torch.equal(restored["lm_head.weight"], embedding)


def test_pickle5_sends_one_out_of_band_buffer_per_dtype_and_reads_back_read_only():
    """Ray stores out-of-band pickle-5 buffers zero-copy and returns them read-only."""
    state = mixed_state_dict()
    packed = pack_state_dict(state, version=1)
    out_of_band: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(packed, protocol=5, buffer_callback=out_of_band.append)
    assert len(out_of_band) == len(packed.buffers) == 4
    assert len(payload) < 2000  # metadata only; tensor bytes travel out of band
    read_only = [memoryview(bytes(buffer.raw())) for buffer in out_of_band]
    received = pickle.loads(payload, buffers=read_only)
    assert not received.buffers["float32"].flags.writeable
    restored = unpack(received)
    for name, tensor in state.items():
        assert torch.equal(restored[name], tensor), name


def test_bad_input_names_the_offender():
    with pytest.raises(ValueError, match="empty"):
        pack_state_dict({})
    with pytest.raises(ValueError, match="'w'.*ndarray"):
        pack_state_dict({"w": np.zeros(2)})
    broken = PackedWeights(
        version=0,
        buffers={"float32": np.zeros(4, dtype=np.float32)},
        meta=[TensorSpec("w", "float32", (5,), 0, 5)],
    )
    with pytest.raises(ValueError, match="'w' spans elements 0..5"):
        unpack(broken)
    missing = PackedWeights(version=0, buffers={}, meta=[TensorSpec("w", "float16", (1,), 0, 1)])
    with pytest.raises(ValueError, match="'w' has dtype 'float16' but no buffer"):
        unpack(missing)


def test_packer_reuses_its_buffers_for_each_version_and_reallocates_for_another_layout():
    from memrl.weights import WeightPacker

    packer = WeightPacker()
    state = mixed_state_dict()
    first = packer.pack(state, version=1)
    address = first.buffers["float32"].ctypes.data
    state["embed.weight"].add_(1.0)
    second = packer.pack(state, version=2)
    assert second.version == 2 and second.buffers["float32"].ctypes.data == address
    for name, tensor in unpack(second).items():
        assert torch.equal(tensor, state[name]), name
    assert unpack(first)["embed.weight"].equal(state["embed.weight"])  # overwritten: valid until the next pack
    bigger = {**state, "extra": torch.zeros(4)}
    third = packer.pack(bigger, version=3)
    assert third.buffers["float32"].ctypes.data != address
    assert unpack(third)["extra"].shape == (4,)
