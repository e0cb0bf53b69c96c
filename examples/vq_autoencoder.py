"""A small autoencoder on scikit-learn's digits whose latent is vector-quantized.

Two identical autoencoders are trained on the CPU for the same number of
steps, one with a :class:`~torchkmeans.quantizer.VectorQuantizer` between
encoder and decoder, one without, and the script prints the reconstruction
error (mean squared error per pixel, pixels scaled to [0, 1]) of both and the
codebook perplexity on the whole data set.

The latent of each image is 16 numbers, quantized as 8 heads of 2 numbers
with one codebook of 32 codes per head: each image becomes 8 tokens of 5
bits.

Run ``python examples/vq_autoencoder.py --help`` for the options.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import torch
from torch import nn

from torchkmeans.quantizer import VectorQuantizer


class Report(NamedTuple):
    """What :func:`main` measures (errors are per pixel, on the whole data set)."""

    error_plain: float
    error_quantized: float
    perplexity: float
    num_codes: int


class Autoencoder(nn.Module):
    """MLP encoder and decoder, with an optional vector quantizer on the latent."""

    def __init__(self, quantizer: VectorQuantizer | None, latent: int, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.GELU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, 64), nn.Sigmoid()
        )
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and the auxiliary (commitment) loss."""
        z = self.encoder(x)
        aux = z.new_zeros(())
        if self.quantizer is not None:
            z, _, aux = self.quantizer(z)
        return self.decoder(z), aux


def load_pixels() -> torch.Tensor:
    """The 1797 digits as float32 rows of 64 pixels in [0, 1]."""
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data / 16.0, dtype=torch.float32)


def train(
    model: Autoencoder,
    data: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> float:
    """Adam on random minibatches; returns the final per-pixel error on ``data``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(steps):
        batch = data[torch.randint(len(data), (batch_size,), generator=generator)]
        reconstruction, aux = model(batch)
        loss = nn.functional.mse_loss(reconstruction, batch) + aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        reconstruction, _ = model(data)
    return float(nn.functional.mse_loss(reconstruction, data))


def main(
    steps: int = 600,
    *,
    batch_size: int = 128,
    num_codes: int = 32,
    heads: int = 8,
    code_dim: int = 2,
    hidden: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int | None = 1,
    verbose: bool = True,
) -> Report:
    """Train both autoencoders and report their errors and the codebook perplexity.

    ``threads`` caps torch's intra-op threads while training (restored
    afterwards): on matrices this small, thread start-up costs more than it
    saves, by orders of magnitude on a busy machine. None leaves it alone.
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(steps, batch_size, num_codes, heads, code_dim, hidden, lr, seed, verbose)
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    steps: int,
    batch_size: int,
    num_codes: int,
    heads: int,
    code_dim: int,
    hidden: int,
    lr: float,
    seed: int,
    verbose: bool,
) -> Report:
    data = load_pixels()
    latent = heads * code_dim

    torch.manual_seed(seed)
    plain = Autoencoder(None, latent, hidden)
    error_plain = train(
        plain,
        data,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        generator=torch.Generator().manual_seed(seed),
    )

    torch.manual_seed(seed)
    quantizer = VectorQuantizer(num_codes, code_dim, heads=heads, decay=0.9, commitment_weight=0.1)
    vq = Autoencoder(quantizer, latent, hidden)
    error_quantized = train(
        vq,
        data,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        generator=torch.Generator().manual_seed(seed),
    )
    # The last (eval) batch was the whole data set.
    perplexity = float(quantizer.perplexity.mean())

    report = Report(error_plain, error_quantized, perplexity, num_codes)
    if verbose:
        print(f"reconstruction error without quantization: {error_plain:.5f}")
        print(
            f"reconstruction error with quantization:    {error_quantized:.5f} "
            f"({error_quantized / error_plain:.2f}x)"
        )
        print(
            f"codebook perplexity: {perplexity:.1f} of {num_codes} codes "
            f"(mean over {heads} heads), usage {float(quantizer.usage.mean()):.0%}"
        )
    return report


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-codes", type=int, default=32)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--code-dim", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    main(
        args.steps,
        batch_size=args.batch_size,
        num_codes=args.num_codes,
        heads=args.heads,
        code_dim=args.code_dim,
        seed=args.seed,
    )
