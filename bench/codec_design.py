"""Can a tiny AutoencoderKL be the tiny world's codec? Trains one and measures reconstruction and speed.

    OMP_NUM_THREADS=1 python bench/codec_design.py --data results/data/synthetic/train_k4 \
        --test results/data/synthetic/test_k2 --out runs/codec --steps 1500 --batch 16 --channels 4

FLUX's tokens are VAE latents (16 channels x 2x2 packing = 64 dims for a 3072-wide model); the
tiny pixel codec's are 192-dim pixels for a 128-wide model. This trains a diffusers AutoencoderKL
(downsample 4, `--channels` latent channels: tokens of 4 x channels dims on the same 12 x 12 grid)
on the split's targets and references, then prints the held-out PSNR of the round trip, the
latents' scale, and the encode/decode time per image beside the pixel codec's, from one run.
Writes <out>/vae (a diffusers folder) and <out>/recon.png (test targets over their round trips).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from mosaic.data.records import read_manifest
from mosaic.model.codec import PixelCodec, VaeCodec
from mosaic.infra.runfolder import atomic_file


def images(root: Path, with_refs: bool) -> torch.Tensor:
    out = []
    for r in read_manifest(root):
        paths = [r["target"]] + ([x["image"] for x in r["references"]] if with_refs else [])
        for p in paths:
            im = Image.open(root / p).convert("RGB").resize((96, 96), Image.BICUBIC)
            out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    return torch.stack(out).float().div(127.5).sub(1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(-1, 1) - b) ** 2).mean()) / 4  # images in [-1, 1]: peak-to-peak 2
    return 10 * math.log10(1 / max(mse, 1e-12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    train, test = images(Path(a.data), True), images(Path(a.test), False)
    w = a.width
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(w, 2 * w, 2 * w),
                        layers_per_block=1, latent_channels=a.channels, norm_num_groups=min(32, w // 2),
                        sample_size=96)
    opt = torch.optim.AdamW(vae.parameters(), lr=a.lr)
    warm = max(1, a.steps // 20)  # linear warm-up, then cosine decay
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / a.steps)))
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    for step in range(a.steps):
        x = train[torch.randint(len(train), (a.batch,), generator=g)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = (rec - x).abs().mean() + a.kl * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            print(f"step {step}: L1 {float((rec - x).abs().mean()):.4f}", flush=True)
    seconds = time.perf_counter() - t0
    vae.eval()
    with torch.no_grad():
        z = vae.encode(train[:256]).latent_dist.mode()
        vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1 / z.std()))
        codec, pixel = VaeCodec(vae), PixelCodec(4)
        t1 = time.perf_counter()
        rec = codec.decode(codec.encode(test), (96, 96))
        vae_s = (time.perf_counter() - t1) / len(test)
        t1 = time.perf_counter()
        pixel.decode(pixel.encode(test), (96, 96))
        pix_s = (time.perf_counter() - t1) / len(test)
        tokens = codec.encode(test)
    vae.save_pretrained(a.out / "vae")
    grid = torch.cat([torch.cat(list(test), 2), torch.cat(list(rec.clamp(-1, 1)), 2)], 1)
    with atomic_file(a.out / "recon.png") as tmp:
        Image.fromarray(((grid + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()).save(tmp)
    print(f"trained {a.steps} x {a.batch} in {seconds:.0f} s; held-out PSNR {psnr(rec, test):.1f} dB "
          f"({len(test)} test targets); tokens {tuple(tokens.shape[1:])} (std {float(tokens.std()):.2f}); "
          f"round trip {1e3 * vae_s:.1f} ms/image vs pixel codec {1e3 * pix_s:.2f} ms "
          f"({vae_s / max(pix_s, 1e-9):.0f}x)")


if __name__ == "__main__":
    main()
