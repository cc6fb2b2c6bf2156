"""Codecs: pixel codec (tiny world) and the AutoencoderKL path (paper), on a tiny random VAE."""
import pytest
import torch
from diffusers import AutoencoderKL

from mosaic.model import PixelCodec, VaeCodec, build_codec, pack, unpack


def test_pack_unpack_inverse_and_order():
    lat = torch.randn(2, 3, 4, 6)
    tok = pack(lat)
    assert tok.shape == (2, 6, 12)
    assert torch.equal(unpack(tok, (4, 6)), lat)
    # token (row 0, col 1) holds the 2x2 patch lat[:, :, 0:2, 2:4], channel-major like FluxPipeline._pack_latents
    assert torch.equal(tok[:, 1], lat[:, :, 0:2, 2:4].reshape(2, 12))


def test_pixel_codec_roundtrip():
    codec = build_codec("tiny")
    assert isinstance(codec, PixelCodec)
    assert (codec.downsample, codec.patch, codec.channels) == (4, 2, 192)
    img = torch.rand(2, 3, 96, 48) * 2 - 1
    tok = codec.encode(img)
    assert tok.shape == (2, 12 * 6, 192) and codec.grid(96, 48) == (12, 6)
    assert torch.equal(codec.decode(tok, (96, 48)), img)
    with pytest.raises(ValueError, match="multiple of 8"):
        codec.grid(90, 48)


def _tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=4, layers_per_block=1, sample_size=16, shift_factor=0.25, scaling_factor=0.5)


def test_vae_codec_shapes_and_normalisation(tmp_path):
    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    codec = VaeCodec.from_pretrained(tmp_path)  # a diffusers folder with a vae/ subfolder
    assert (codec.downsample, codec.patch, codec.channels) == (2, 2, 16)
    img = torch.rand(2, 3, 16, 24) * 2 - 1
    tok = codec.encode(img)
    assert tok.shape == (2, 4 * 6, 16) and codec.grid(16, 24) == (4, 6)
    with torch.no_grad():
        z = vae.encode(img).latent_dist.mode()
        assert torch.allclose(tok, pack((z - 0.25) * 0.5), atol=1e-6)
        out = codec.decode(tok, (16, 24))
        assert torch.allclose(out, vae.decode(z).sample, atol=1e-5)
    assert out.shape == img.shape


def test_vae_missing_weights_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="VAE weights"):
        build_codec("flux-dev")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        build_codec("flux-dev", weights=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="vae"):
        build_codec("flux-dev", weights=tmp_path / "empty")
