"""VectorQuantizer: straight-through gradient, EMA updates, dead codes, heads,
state, half precision, torch.compile and two gloo ranks.

Run as a script (``python tests/test_quantizer.py gloo PORT OUTDIR``) this file
is also the two-process worker of the distributed test.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_identical, on_the_cpu_paths_only
from torch import nn

from torchkmeans import quantizer as quantizer_module
from torchkmeans.functional import nearest_centroids
from torchkmeans.quantizer import QuantizerOutput, VectorQuantizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    # The tensors here are tiny: on a shared machine, waking a second thread
    # for each of them costs milliseconds per op.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make(num_codes: int, dim: int, codebook: list, counts: list, **kwargs: Any) -> VectorQuantizer:
    """A quantizer (one head) with the given codes and EMA counts, already initialised."""
    vq = VectorQuantizer(num_codes, dim, kmeans_init=False, **kwargs)
    book = torch.tensor(codebook, dtype=torch.float32).reshape(1, num_codes, dim)
    weight = torch.tensor(counts, dtype=torch.float32).reshape(1, num_codes)
    vq.codebook.copy_(book)
    vq.ema_counts.copy_(weight)
    vq.ema_sums.copy_(book * weight.unsqueeze(-1))
    return vq


# ----------------------------------------------------------------- gradients


def test_gradient_reaches_the_encoder_through_the_straight_through_estimator():
    torch.manual_seed(0)
    encoder = nn.Linear(5, 3)
    vq = VectorQuantizer(8, 3)
    x = torch.randn(40, 5)
    z = encoder(x)
    z.retain_grad()
    vq(z.detach())  # the k-means initialisation
    before = vq.codebook.clone()
    quantized, codes, _ = vq(z)
    # The forward value is exactly the code chosen before this step's update.
    assert torch.equal(quantized, before[0][codes])
    (quantized.square()).sum().backward()
    # Identity Jacobian from quantized to z: dL/dz = 2 q, and on to the weights.
    torch.testing.assert_close(z.grad, 2 * quantized.detach())
    torch.testing.assert_close(encoder.weight.grad, (2 * quantized.detach()).T @ x)
    assert float(encoder.weight.grad.abs().sum()) > 0


def test_commitment_loss_pulls_x_towards_its_code_and_nothing_trains_the_codebook():
    vq = make(2, 1, [[0.0], [10.0]], [1.0, 1.0], commitment_weight=0.5)
    x = torch.tensor([[1.0], [9.0], [4.0]], requires_grad=True)
    _, _, loss = vq(x)
    q = torch.tensor([[0.0], [10.0], [0.0]])
    torch.testing.assert_close(loss, 0.5 * ((x.detach() - q) ** 2).mean())
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * 0.5 * (x.detach() - q) / 3)
    assert list(vq.parameters()) == []
    assert not any(b.requires_grad for b in vq.buffers())


@pytest.mark.parametrize("exponent", [60, 64])
def test_commitment_loss_of_large_float32_inputs_is_the_unit_scale_loss_scaled(exponent):
    # Squares near 2^120 summed past float32's range: the loss was inf. Scaled
    # by a power of two it is the unit-scale loss times 2^(2 exponent), and
    # the gradient the unit-scale gradient times 2^exponent, exactly.
    gen = torch.Generator().manual_seed(0)
    codebook = torch.randn(16, 8, generator=gen)
    x = torch.randn(300, 8, generator=gen)
    results = []
    for scale in (1.0, 2.0**exponent):
        vq = make(16, 8, (codebook * scale).tolist(), [1.0] * 16).eval()
        z = (x * scale).requires_grad_()
        loss = vq(z).loss
        loss.backward()
        results.append((loss.detach(), z.grad))
    (loss, grad), (far_loss, far_grad) = results
    assert torch.equal(far_loss, loss * 2.0**exponent * 2.0**exponent)
    assert torch.equal(far_grad, grad * 2.0**exponent)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("padding", [0.0, 1e3, float("nan")])
def test_masked_vectors_take_no_part_in_the_loss_statistics_or_init(metric, padding):
    # Padding of sequences of different lengths: without a mask it entered
    # the k-means init, the EMA statistics, the loss and the counts. Masked,
    # training must go as on the kept vectors alone.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 30, 6, generator=gen)
    mask = torch.rand(4, 30, generator=gen) > 0.3
    padded = x.masked_fill(~mask.unsqueeze(-1), padding)
    alone = VectorQuantizer(8, 3, heads=2, metric=metric, dead_code_threshold=0)
    masked = VectorQuantizer(8, 3, heads=2, metric=metric, dead_code_threshold=0)
    for step in range(3):
        z = padded * (1 + step)
        z.requires_grad_()
        torch.manual_seed(step)
        expected = alone(x[mask] * (1 + step))
        torch.manual_seed(step)
        out = masked(z, mask=mask)
        torch.testing.assert_close(out.loss, expected.loss)
        assert torch.equal(out.codes[mask], expected.codes)
        torch.testing.assert_close(masked.codebook, alone.codebook)
        torch.testing.assert_close(masked.ema_counts, alone.ema_counts)
        assert torch.equal(masked.last_counts, alone.last_counts)
        out.loss.backward()
        assert bool(torch.isfinite(z.grad[mask]).all())
    masked.eval()
    alone.eval()
    torch.testing.assert_close(masked(padded, mask=mask).loss, alone(x[mask]).loss)
    assert torch.equal(masked.usage, alone.usage)
    torch.testing.assert_close(masked.perplexity, alone.perplexity)


@pytest.mark.parametrize("heads", [1, 2])
def test_channels_first_feature_maps_are_quantized_along_their_channels(heads):
    # A convolution's (batch, channels, height, width) output, quantized as
    # it is: the same codes, codebook and loss as its channels-last
    # permutation, quantized and lookup in the channels-first layout.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 5, 7, generator=gen)
    last = VectorQuantizer(8, 6 // heads, heads=heads)
    first = VectorQuantizer(8, 6 // heads, heads=heads, channel_dim=1)
    for step in range(3):
        z = (x * (1 + step)).requires_grad_()
        torch.manual_seed(step)
        expected = last(z.detach().permute(0, 2, 3, 1))
        torch.manual_seed(step)
        out = first(z)
        assert torch.equal(out.quantized, expected.quantized.permute(0, 3, 1, 2))
        assert torch.equal(out.codes, expected.codes)
        assert out.codes.shape == ((4, 5, 7) if heads == 1 else (4, 5, 7, heads))
        torch.testing.assert_close(out.loss, expected.loss)
        assert torch.equal(first.codebook, last.codebook)
        weights = torch.randn(x.shape, generator=gen)
        (out.quantized * weights).sum().backward()
        assert torch.equal(z.grad, weights)  # straight through, in the same layout
    first.eval()
    out = first(x)
    assert torch.equal(first.lookup(out.codes), out.quantized)
    mask = torch.rand(4, 5, 7, generator=gen) > 0.5
    assert first(x, mask=mask).codes.shape == out.codes.shape


def test_a_batch_all_masked_has_a_zero_loss_and_leaves_the_codebook():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3)
    vq(torch.randn(64, 3))
    state = {name: value.clone() for name, value in vq.state_dict().items()}
    x = torch.randn(2, 5, 3, requires_grad=True)
    out = vq(x, mask=torch.zeros(2, 5, dtype=torch.bool))
    assert out.codes.shape == (2, 5) and float(out.loss.detach()) == 0.0
    out.loss.backward()
    assert bool((x.grad == 0).all())
    for name, value in vq.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert float(vq.usage) == 0.0


def test_commitment_loss_has_the_second_derivative_of_the_mean():
    # Double backward through the quantizer (a gradient penalty, a
    # Hessian-vector product): d^2 loss / dx^2 = 2 * weight / n * I.
    vq = make(2, 1, [[0.0], [10.0]], [1.0, 1.0], commitment_weight=0.5).eval()
    x = torch.tensor([[1.0], [9.0], [4.0]])
    hessian = torch.autograd.functional.hessian(lambda z: vq(z).loss, x)
    torch.testing.assert_close(hessian.reshape(3, 3), torch.eye(3) * 2 * 0.5 / 3)


def test_commitment_loss_takes_no_gradient_into_the_codebook():
    """Only the encoder is committed: a codebook that takes a gradient (here
    one replaced through functional_call) got one from the loss too."""
    vq = make(2, 1, [[0.0], [10.0]], [1.0, 1.0]).eval()
    book = vq.codebook.clone().requires_grad_()
    x = torch.tensor([[1.0], [9.0], [4.0]], requires_grad=True)
    out = torch.func.functional_call(vq, {"codebook": book}, (x,))
    out.loss.backward()
    assert book.grad is None
    torch.testing.assert_close(x.grad, 2 * 0.25 / 3 * torch.tensor([[1.0], [-1.0], [4.0]]))


# ---------------------------------------------------------------- torch.func


def _trained(num_codes: int = 8, dim: int = 4, **kwargs: Any) -> tuple[Any, torch.Tensor]:
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes, dim, **kwargs)
    x = torch.randn(64, dim * kwargs.get("heads", 1))
    vq(x)
    return vq, x


@pytest.mark.parametrize("training", [False, True])
def test_torch_func_grad_equals_autograd(training):
    """torch.func.grad through the quantizer: the gradient of autograd and,
    in training mode, the same EMA step (the codes and statistics were
    computed on wrapped tensors: the fused kernel raised "Cannot access data
    pointer", the buffers' update "would mutate a captured Tensor")."""
    vq, x = _trained()
    vq.train(training)
    other = copy.deepcopy(vq)
    weights = torch.randn(64, 4)

    def objective(z, module):
        out = module(z * 2)
        return (out.quantized * weights).sum() + out.loss

    torch.manual_seed(1)
    gradient = torch.func.grad(objective)(x, vq)
    z = x.clone().requires_grad_()
    torch.manual_seed(1)
    objective(z, other).backward()
    torch.testing.assert_close(gradient, z.grad)
    for name, value in other.state_dict().items():
        assert torch.equal(vq.state_dict()[name], value), name
    assert torch.equal(vq.last_counts, other.last_counts)


def test_torch_func_grad_under_bfloat16_autocast_equals_autograd():
    """An encoder in a CPU autocast region: bfloat16 vectors, codes and
    statistics in float32, and torch.func.grad's gradient that of autograd."""
    vq, x = _trained()
    other = copy.deepcopy(vq)
    encoder = nn.Linear(4, 4)

    def objective(weight, module):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = torch.func.functional_call(encoder, {"weight": weight}, (x,))
            out = module(z)
            assert z.dtype == out.quantized.dtype == torch.bfloat16
            return out.quantized.float().square().sum() + out.loss

    torch.manual_seed(1)
    gradient = torch.func.grad(objective)(encoder.weight.detach(), vq)
    weight = encoder.weight.detach().clone().requires_grad_()
    torch.manual_seed(1)
    objective(weight, other).backward()
    torch.testing.assert_close(gradient, weight.grad)
    assert vq.codebook.dtype == torch.float32
    assert torch.equal(vq.codebook, other.codebook)


def test_torch_func_grad_runs_the_kmeans_init_and_keeps_no_wrapped_tensor():
    torch.manual_seed(0)
    vq, x = VectorQuantizer(8, 4), torch.randn(64, 4)
    other = copy.deepcopy(vq)
    torch.manual_seed(1)
    torch.func.grad(lambda z: vq(z).loss)(x[:5])  # collected, too few vectors
    assert len(vq._init_samples) == 1
    assert not torch._C._functorch.is_functorch_wrapped_tensor(vq._init_samples[0])
    torch.func.grad(lambda z: vq(z).loss)(x)
    torch.manual_seed(1)
    other(x[:5]), other(x)
    assert bool(vq.initialized)
    for name, value in other.state_dict().items():
        assert torch.equal(vq.state_dict()[name], value), name


def test_torch_func_vmap_over_a_batch_of_inputs_in_eval_mode():
    vq, x = _trained(heads=2)
    vq.eval()
    expected = vq(x)
    batched = torch.func.vmap(vq)(x.reshape(4, 16, 8))
    assert torch.equal(batched.codes, expected.codes.reshape(4, 16, 2))
    assert torch.equal(batched.quantized, expected.quantized.reshape(4, 16, 8))
    torch.testing.assert_close(batched.loss.mean(), expected.loss)
    # Per-example gradients: vmap of grad.
    per_example = torch.func.vmap(torch.func.grad(lambda z: vq(z).loss))(x.reshape(4, 16, 8))
    z = x.clone().requires_grad_()
    vq(z.reshape(4, 16, 8)[1]).loss.backward()
    torch.testing.assert_close(per_example[1], z.grad.reshape(4, 16, 8)[1])


def test_a_torch_without_the_private_functorch_helper_still_imports_and_quantizes():
    # The quantizer imports a private torch helper to tell torch.func's
    # transforms apart; a torch without it failed `import torchkmeans`.
    script = """
import torch, torch._functorch.pyfunctorch as private
del private.coerce_cinterpreter
import torchkmeans
torch.manual_seed(0)
vq = torchkmeans.VectorQuantizer(8, 4)
out = vq(torch.randn(64, 4))
assert out.codes.shape == (64,) and bool(vq.initialized)
vq.eval()
try:
    torch.func.vmap(vq)(torch.randn(2, 16, 4))
except RuntimeError as error:
    assert "coerce_cinterpreter" in str(error) and "outside the transform" in str(error)
else:
    raise AssertionError("vmap ran without the helper")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def _initialised_ensemble() -> tuple[list[VectorQuantizer], dict, VectorQuantizer]:
    """Three initialised quantizers in eval() mode (seed 0), their buffers
    stacked by torch.func.stack_module_state, and a meta copy to call."""
    torch.manual_seed(0)
    quantizers = [VectorQuantizer(8, 4) for _ in range(3)]
    for vq in quantizers:
        vq(torch.randn(64, 4))
        vq.eval()
    _, buffers = torch.func.stack_module_state(quantizers)
    return quantizers, buffers, copy.deepcopy(quantizers[0]).to("meta")


def test_an_ensemble_of_quantizers_runs_under_vmap_without_warnings(recwarn):
    """torch.func.stack_module_state and functional_call: several quantizers
    in one vmap (a clamp_ in the codes' scaling warned of a "performance drop")."""
    quantizers, buffers, base = _initialised_ensemble()
    x = torch.randn(3, 20, 4)
    codes = torch.func.vmap(lambda b, z: torch.func.functional_call(base, b, (z,)).codes)(
        buffers, x
    )
    assert torch.equal(codes, torch.stack([vq(z).codes for vq, z in zip(quantizers, x)]))
    assert not [str(w.message) for w in recwarn.list]


def test_an_ensemble_trains_under_vmap_as_its_members_apart(recwarn):
    """Stacked buffers (torch.func.stack_module_state) each take the EMA
    step of their own batch, as the quantizers apart (the sums were added in
    place into an unbatched tensor, which vmap refuses)."""
    torch.manual_seed(0)
    quantizers = [VectorQuantizer(8, 4, dead_code_threshold=0.0) for _ in range(3)]
    for vq in quantizers:
        vq(torch.randn(64, 4))
    apart = copy.deepcopy(quantizers)
    _, buffers = torch.func.stack_module_state(quantizers)
    base = copy.deepcopy(quantizers[0]).to("meta")
    for step in range(2):
        x = torch.randn(3, 64, 4) * (1 + step)
        out = torch.func.vmap(lambda b, z: torch.func.functional_call(base, b, (z,)))(buffers, x)
        expected = [vq(z) for vq, z in zip(apart, x)]
        assert torch.equal(out.codes, torch.stack([e.codes for e in expected]))
        torch.testing.assert_close(out.loss, torch.stack([e.loss for e in expected]))
        for name in ("codebook", "ema_sums", "ema_counts"):
            torch.testing.assert_close(
                buffers[name], torch.stack([getattr(vq, name) for vq in apart])
            )
    assert not [str(w.message) for w in recwarn.list]
    fresh = copy.deepcopy(base)
    fresh._needs_init = True
    with pytest.raises(RuntimeError, match=r"or vmap over the stacked buffers of initialised"):
        torch.func.vmap(lambda b, z: torch.func.functional_call(fresh, b, (z,)))(buffers, x)


@pytest.mark.parametrize("heads", [1, 2])
def test_usage_and_perplexity_under_vmap_are_those_of_the_whole_batch(heads):
    """vmap in eval() mode (over a batch, nested, around grad, inside grad,
    with a mask): usage and perplexity of the batch as quantized in one call
    (vmap left them at the last batch quantized outside it)."""
    vq, _ = _trained(heads=heads)
    vq.eval()
    reference = copy.deepcopy(vq)
    x, mask = torch.randn(4, 3, 16, 4 * heads), torch.rand(4, 3, 16) < 0.5
    runs = {
        "vmap": lambda: torch.func.vmap(vq)(x),
        "nested": lambda: torch.func.vmap(torch.func.vmap(vq))(x),
        "vmap of grad": lambda: torch.func.vmap(torch.func.grad(lambda z: vq(z).loss))(x),
        "grad of vmap": lambda: torch.func.grad(lambda z: torch.func.vmap(vq)(z).loss.sum())(x),
    }
    reference(x)
    for name, run in runs.items():
        vq.last_counts.zero_()
        run()
        assert torch.equal(vq.last_counts, reference.last_counts), name
        torch.testing.assert_close(vq.perplexity, reference.perplexity)
    reference(x, mask=mask)
    torch.func.vmap(vq)(x, mask)
    assert torch.equal(vq.last_counts, reference.last_counts)
    assert torch.equal(vq.usage, reference.usage)


def test_an_ensemble_under_vmap_keeps_each_members_usage():
    quantizers, buffers, base = _initialised_ensemble()
    x = torch.randn(3, 5, 4)
    torch.func.vmap(lambda b, z: torch.func.functional_call(base, b, (z,)))(buffers, x)
    for vq, z in zip(quantizers, x):
        vq(z)
    expected = torch.stack([vq.last_counts for vq in quantizers])
    assert torch.equal(buffers["last_counts"], expected)


def test_compiled_vmap_in_eval_mode_gives_the_codes_and_usage_of_the_whole_batch():
    """torch.compile(fullgraph=True) around vmap (the counts were written
    into the unbatched last_counts inside the traced vmap and refused), and
    around an ensemble's vmap."""
    vq, _ = _trained(heads=2)
    vq.eval()
    reference = copy.deepcopy(vq)
    x, mask = torch.randn(4, 16, 8), torch.rand(4, 16) < 0.5
    expected = reference(x, mask)
    runs = {
        "vmap": lambda z: torch.func.vmap(vq)(z, mask).codes,
        "vmap of grad": lambda z: torch.func.vmap(torch.func.grad(lambda r, m: vq(r, m).loss))(
            z, mask
        ),
        "grad of vmap": lambda z: torch.func.grad(
            lambda r: torch.func.vmap(vq)(r, mask).loss.sum()
        )(z),
    }
    for name, run in runs.items():
        torch._dynamo.reset()
        vq.last_counts.zero_()
        out = torch.compile(run, backend="aot_eager", fullgraph=True)(x)
        assert torch.equal(vq.last_counts, reference.last_counts), name
        if name == "vmap":
            assert torch.equal(out, expected.codes)
    quantizers, buffers, base = _initialised_ensemble()
    torch._dynamo.reset()
    codes = torch.compile(
        torch.func.vmap(lambda b, z: torch.func.functional_call(base, b, (z,)).codes),
        backend="aot_eager",
        fullgraph=True,
    )(buffers, x[:3, :, :4])
    assert torch.equal(codes, torch.stack([m(z).codes for m, z in zip(quantizers, x[:3, :, :4])]))
    assert torch.equal(buffers["last_counts"], torch.stack([m.last_counts for m in quantizers]))


def test_compiled_vmap_in_training_mode_trains_an_ensemble_and_refuses_one_codebook():
    """Compiled, vmap's rows were taken for one problem: an obscure error
    from the sums, for an ensemble as for a single quantizer."""
    torch.manual_seed(0)
    quantizers = [VectorQuantizer(8, 4, dead_code_threshold=0.0) for _ in range(3)]
    for member in quantizers:
        member(torch.randn(64, 4))
    apart = copy.deepcopy(quantizers)
    _, buffers = torch.func.stack_module_state(quantizers)
    base = copy.deepcopy(quantizers[0]).to("meta")
    x = torch.randn(3, 64, 4)
    torch._dynamo.reset()
    out = torch.compile(
        torch.func.vmap(lambda b, z: torch.func.functional_call(base, b, (z,))),
        backend="aot_eager",
        fullgraph=True,
    )(buffers, x)
    expected = [member(z) for member, z in zip(apart, x)]
    assert torch.equal(out.codes, torch.stack([e.codes for e in expected]))
    for name in ("codebook", "ema_sums", "ema_counts", "last_counts"):
        torch.testing.assert_close(buffers[name], torch.stack([getattr(m, name) for m in apart]))
    vq = apart[0]
    state = copy.deepcopy(vq.state_dict())
    torch._dynamo.reset()
    with pytest.raises(RuntimeError, match=r"Expected VectorQuantizer to be in eval\(\) mode"):
        torch.compile(torch.func.vmap(vq), backend="aot_eager")(x)
    for name, value in vq.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_torch_func_vmap_in_training_mode_is_refused_before_any_update():
    vq, x = _trained()
    state = copy.deepcopy(vq.state_dict())
    with pytest.raises(RuntimeError, match=r"Expected VectorQuantizer to be in eval\(\) mode"):
        torch.func.vmap(vq, randomness="different")(x.reshape(4, 16, 4))
    for name, value in vq.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_functional_call_with_a_replaced_codebook():
    vq, x = _trained()
    vq.eval()
    codebook = torch.randn(1, 8, 4)
    reference = copy.deepcopy(vq)
    reference.codebook.copy_(codebook)
    out = torch.func.functional_call(vq, {"codebook": codebook}, (x,))
    assert torch.equal(out.codes, reference(x).codes)
    # The gradient of the quantized vectors' sum with respect to the codes:
    # each code's count times a row of ones.
    gradient = torch.func.grad(
        lambda book: torch.func.functional_call(vq, {"codebook": book}, (x,)).quantized.sum()
    )(codebook)
    counts = torch.bincount(out.codes, minlength=8).float()
    torch.testing.assert_close(gradient, counts.reshape(1, 8, 1).expand(1, 8, 4))
    vq.train()
    with pytest.raises(RuntimeError, match="Expected VectorQuantizer's buffers to be its own"):
        torch.func.grad(lambda book: torch.func.functional_call(vq, {"codebook": book}, (x,)).loss)(
            codebook
        )


def test_the_kernel_is_not_called_on_tensors_without_memory():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from torchkmeans.functional import _native

    x = torch.randn(64, 4)
    seen = []
    torch.func.grad(lambda z: seen.append(_native.prefers_native(z, 8)) or z.sum())(x)
    torch.func.vmap(lambda z: seen.append(_native.prefers_native(z, 8)) or z)(x[None])
    with FakeTensorMode():
        seen.append(_native.prefers_native(torch.randn(64, 4), 8))
    assert seen == [False, False, False]


def test_a_codebook_that_requires_grad_still_takes_the_ema_step():
    vq, x = _trained()
    other = copy.deepcopy(vq)
    vq.codebook.requires_grad_(True)
    torch.manual_seed(1)
    out = vq(x * 2)
    torch.manual_seed(1)
    expected = other(x * 2)
    assert torch.equal(out.codes, expected.codes)
    assert torch.equal(vq.codebook.detach(), other.codebook)
    out.quantized.sum().backward()
    counts = torch.bincount(out.codes, minlength=8).float()
    assert torch.equal(vq.codebook.grad, counts.reshape(1, 8, 1).expand(1, 8, 4))


# ---------------------------------------------------------------- EMA update


def test_one_ema_update_equals_the_closed_form():
    decay, eps = 0.75, 1e-3
    vq = make(
        2, 2, [[0.0, 0.0], [10.0, 10.0]], [2.0, 1.0], decay=decay, eps=eps, dead_code_threshold=0
    )
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 10.0], [11.0, 10.0], [10.0, 9.0]])
    quantized, codes, _ = vq(x)
    assert codes.tolist() == [0, 0, 1, 1, 1]
    assert quantized.tolist() == [[0.0, 0.0]] * 2 + [[10.0, 10.0]] * 3
    # Batch: code 0 holds 2 vectors summing to (1, 1), code 1 3 summing to (30, 29).
    counts = [0.75 * 2 + 0.25 * 2, 0.75 * 1 + 0.25 * 3]  # 2.0, 1.5
    sums = [[0.25 * 1, 0.25 * 1], [0.75 * 10 + 0.25 * 30, 0.75 * 10 + 0.25 * 29]]
    total = counts[0] + counts[1]
    smoothed = [(c + eps) / (total + 2 * eps) * total for c in counts]
    expected = [[s / smoothed[i] for s in sums[i]] for i in range(2)]
    torch.testing.assert_close(vq.ema_counts, torch.tensor([counts]))
    torch.testing.assert_close(vq.ema_sums, torch.tensor([sums]))
    torch.testing.assert_close(vq.codebook, torch.tensor([expected]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(vq.last_counts, torch.tensor([[2.0, 3.0]]))


def test_non_finite_rows_stay_out_of_the_codebook():
    # One NaN row made its code NaN for good (and every code it re-seeded).
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[1.0, 0.0], [nan, 1.0], [9.0, 10.0], [inf, 10.0], [11.0, 10.0]])
    vq = make(2, 2, [[0.0, 0.0], [10.0, 10.0]], [2.0, 1.0], dead_code_threshold=0)
    clean = make(2, 2, [[0.0, 0.0], [10.0, 10.0]], [2.0, 1.0], dead_code_threshold=0)
    _, codes, loss = vq(x)
    clean(x[[0, 2, 4]])
    assert codes[[0, 2, 4]].tolist() == [0, 1, 1] and bool(loss.isnan())
    for name, value in clean.state_dict().items():
        assert torch.equal(getattr(vq, name), value), name
    # Dead codes to re-seed, more than the batch's finite rows.
    torch.manual_seed(0)
    vq = make(4, 1, [[0.0], [1.0], [2.0], [3.0]], [10.0, 1e-3, 1e-3, 1e-3])
    vq(torch.tensor([[nan], [5.0], [inf]]))
    for buffer in (vq.codebook, vq.ema_sums, vq.ema_counts):
        assert bool(torch.isfinite(buffer).all())
    assert 5.0 in vq.codebook.flatten().tolist()
    # A batch of no finite row leaves the state as it is (at decay 0 the
    # counts were emptied and the codes 0 / 0).
    vq = make(2, 1, [[0.0], [1.0]], [1.0, 1.0], decay=0.0)
    vq(torch.tensor([[nan], [inf]]))
    assert vq.codebook.flatten().tolist() == [0.0, 1.0]
    assert vq.ema_counts.flatten().tolist() == [1.0, 1.0]


def test_eval_leaves_the_codebook_unchanged():
    torch.manual_seed(0)
    vq = VectorQuantizer(6, 2)
    vq(torch.randn(50, 2))
    state = copy.deepcopy(vq.state_dict())
    vq.eval()
    for _ in range(3):
        quantized, codes, _ = vq(torch.randn(30, 2) * 5)
        assert torch.equal(quantized, vq.lookup(codes))
    for name, value in vq.state_dict().items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("initialised", [True, False])
def test_gradient_checkpointing_updates_the_codebook_once_per_step(use_reentrant, initialised):
    """torch.utils.checkpoint runs the forward again during backward: that
    recomputation must not take a second EMA step (nor collect the batch
    twice for the k-means initialisation)."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    plain = VectorQuantizer(8, 2, decay=0.5)
    if initialised:
        plain(torch.randn(64, 2))
    checkpointed = copy.deepcopy(plain)
    x = torch.randn(32 if initialised else 4, 2, requires_grad=True)
    torch.manual_seed(1)
    quantized, codes, loss = plain(x)
    (quantized.sum() + loss).backward()
    torch.manual_seed(1)
    quantized, recorded_codes, loss = checkpoint(checkpointed, x, use_reentrant=use_reentrant)
    (quantized.sum() + loss).backward()
    assert torch.equal(recorded_codes, codes)
    for name, value in plain.state_dict().items():
        assert torch.equal(checkpointed.state_dict()[name], value), name
    assert torch.equal(checkpointed.last_counts, plain.last_counts)
    assert len(checkpointed._init_samples) == len(plain._init_samples)


def test_eval_before_training_does_not_initialise():
    vq = VectorQuantizer(4, 2).eval()
    before = vq.codebook.clone()
    vq(torch.randn(20, 2))
    assert not bool(vq.initialized)
    assert torch.equal(vq.codebook, before)


def test_training_starts_from_codes_copied_into_the_codebook():
    """kmeans_init=False with pretrained codes copied into ``codebook``: the
    first EMA step moves them towards the batch, not back to the random
    codes drawn in __init__ (whose sums stayed in ema_sums)."""
    torch.manual_seed(0)
    codes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = codes.repeat(4, 1)
    vq = VectorQuantizer(4, 2, kmeans_init=False, dead_code_threshold=0.0)
    vq.codebook.copy_(codes.unsqueeze(0))
    out = vq(x)
    assert out.codes.tolist() == [0, 1, 2, 3] * 4
    torch.testing.assert_close(vq.codebook[0], codes)
    torch.testing.assert_close(vq.ema_sums[0], codes * vq.ema_counts[0].unsqueeze(-1))


# --------------------------------------------------------------- init, dead


def test_kmeans_init_finds_the_blobs_on_the_first_training_batch():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    x = centres.repeat(50, 1) + 0.1 * torch.randn(200, 2)
    vq = VectorQuantizer(4, 2, decay=0.99)
    vq(x)
    assert bool(vq.initialized)
    found = vq.codebook[0]
    distance = torch.cdist(centres, found).min(1).values
    assert float(distance.max()) < 0.1
    # One vector of the 50 per blob in the k-means counts, then the EMA step.
    torch.testing.assert_close(vq.ema_counts, torch.full((1, 4), 50.0))


def test_small_batches_are_collected_until_there_are_enough_for_kmeans():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2)
    initial = vq.codebook.clone()
    for _ in range(2):
        vq(torch.randn(3, 2))
        assert not bool(vq.initialized)
        assert torch.equal(vq.codebook, initial)
    vq(torch.randn(3, 2))
    assert bool(vq.initialized)
    assert not torch.equal(vq.codebook, initial)


@pytest.mark.parametrize("batch", [40, 3])
def test_a_non_finite_batch_does_not_stop_the_kmeans_initialisation(batch):
    # The batch stayed among the collected ones: every later training
    # forward raised, on finite batches too.
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3)
    x = torch.randn(batch, 3)
    x[1, 2] = float("nan")
    with pytest.raises(
        ValueError,
        match=r"Expected x to hold finite values for the k-means initialisation "
        r"of the codebook, got NaN or infinity\.",
    ):
        vq(x)
    assert not bool(vq.initialized)
    vq(torch.randn(40, 3))
    assert bool(vq.initialized)
    assert bool(torch.isfinite(vq.codebook).all())


def test_kmeans_init_is_per_head():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(100, 2) + 100, torch.randn(100, 2) - 100], dim=-1)
    vq = VectorQuantizer(5, 2, heads=2)
    vq(x)
    assert bool((vq.codebook[0] > 90).all())
    assert bool((vq.codebook[1] < -90).all())


def test_dead_codes_are_reseeded_from_the_batch():
    torch.manual_seed(0)
    vq = make(3, 2, [[0.0, 0.0], [1000.0, 1000.0], [1.0, 1.0]], [4.0, 1.0, 4.0])
    vq.decay, vq.dead_code_threshold = 0.5, 0.2
    x = torch.randn(16, 2)
    vq(x)
    # EMA counts: codes 0 and 2 hold 2 + 16/2 between them on top of 2 each,
    # code 1 received nothing: 0.5, below 0.2 of the mean 12.5 / 3.
    restart = 0.2 * 12.5 / 3
    reseeded = vq.codebook[0, 1]
    assert bool((x == reseeded).all(-1).any()), "code 1 should now be a vector of the batch"
    assert float(vq.ema_counts[0, 1]) == pytest.approx(restart)
    torch.testing.assert_close(vq.ema_sums[0, 1], restart * reseeded)
    # The live codes kept their EMA statistics.
    assert float(vq.ema_counts[0, 0]) >= 2 and float(vq.ema_counts[0, 2]) >= 2
    assert float(vq.codebook[0, 0].abs().max()) < 2


@pytest.mark.parametrize("per_code", [1, 100])
def test_the_threshold_is_relative_to_the_mean_count(per_code):
    # Batches of 3 or 300 vectors, statistics to scale: the same code is dead
    # at both sizes (an absolute count would fit only one of them).
    torch.manual_seed(0)
    vq = make(4, 1, [[0.0], [10.0], [20.0], [1000.0]], [per_code] * 3 + [0.01 * per_code])
    vq.decay, vq.dead_code_threshold = 0.5, 0.1
    x = torch.tensor([0.0, 10.0, 20.0]).repeat_interleave(per_code).unsqueeze(-1)
    vq(x)
    # Codes 0-2 only moved by the Laplace smoothing; code 3 is a batch vector.
    assert vq.codebook[0, :3].flatten().tolist() == pytest.approx([0.0, 10.0, 20.0], abs=1e-3)
    assert float(vq.codebook[0, 3]) in (0.0, 10.0, 20.0)


def test_without_threshold_a_dead_code_stays():
    vq = make(2, 1, [[0.0], [1000.0]], [4.0, 1.0], decay=0.5, dead_code_threshold=0.0)
    vq(torch.randn(16, 1))
    assert float(vq.codebook[0, 1, 0]) > 990


def test_a_batch_smaller_than_the_codebook_reseeds_every_dead_code():
    # All three vectors go to code 0 (1000); the five others are dead and
    # take the three vectors, wrapping around.
    vq = make(6, 1, [[1000.0 + i] for i in range(6)], [0.0] * 6, dead_code_threshold=0.5)
    x = torch.tensor([[1.0], [2.0], [3.0]])
    vq(x)
    assert set(vq.codebook[0, 1:].flatten().tolist()) == {1.0, 2.0, 3.0}


# --------------------------------------------------------------------- heads


def test_heads_equal_separate_quantizers():
    torch.manual_seed(0)
    heads, dim, k = 3, 2, 5
    options = {"kmeans_init": False, "dead_code_threshold": 0.0, "decay": 0.8}
    together = VectorQuantizer(k, dim, heads=heads, **options)
    apart = [VectorQuantizer(k, dim, **options) for _ in range(heads)]
    for h, vq in enumerate(apart):
        for name in ("codebook", "ema_sums", "ema_counts"):
            getattr(vq, name).copy_(getattr(together, name)[h : h + 1])
    for _ in range(3):
        x = torch.randn(4, 7, heads * dim) * 2
        quantized, codes, loss = together(x)
        assert codes.shape == (4, 7, heads)
        outs = [vq(x[..., h * dim : (h + 1) * dim]) for h, vq in enumerate(apart)]
        for h, out in enumerate(outs):
            assert torch.equal(codes[..., h], out.codes)
            torch.testing.assert_close(quantized[..., h * dim : (h + 1) * dim], out.quantized)
        torch.testing.assert_close(loss, torch.stack([out.loss for out in outs]).mean())
    for h, vq in enumerate(apart):
        torch.testing.assert_close(together.codebook[h], vq.codebook[0])
        torch.testing.assert_close(together.ema_counts[h], vq.ema_counts[0])


@on_the_cpu_paths_only
def test_heads_are_labelled_by_the_fused_kernel_head_by_head(monkeypatch):
    """Batched, the heads took PyTorch's products and the label check (5-12x
    the time of one kernel call per head); the codes are the same."""
    from torchkmeans.functional import _native

    if not _native.available():
        pytest.skip("the fused kernel is not built on this machine")
    torch.manual_seed(0)
    vq, x = VectorQuantizer(32, 4, heads=3).eval(), torch.randn(500, 12)
    expected = [nearest_centroids(x[:, 4 * h : 4 * h + 4], vq.codebook[h]).labels for h in range(3)]
    calls = []
    kernel = _native.nearest
    monkeypatch.setattr(_native, "nearest", lambda *a, **kw: calls.append(1) or kernel(*a, **kw))
    assert torch.equal(vq(x).codes, torch.stack(expected, dim=-1))
    assert len(calls) == 3


# ------------------------------------------------------------ state, dtypes


def test_state_dict_round_trips():
    torch.manual_seed(0)
    vq = VectorQuantizer(6, 2, heads=2)
    for _ in range(3):
        vq(torch.randn(40, 4))
    state = vq.state_dict()
    buffers = {"codebook", "ema_sums", "ema_counts", "initialized"}
    assert set(state) == buffers | {"init_samples", "init_collected"}
    torch.manual_seed(1)
    loaded = VectorQuantizer(6, 2, heads=2)
    loaded.load_state_dict(state)
    for name, value in state.items():
        assert torch.equal(getattr(loaded, name), value), name
    x = torch.randn(40, 4)
    # The loaded quantizer is initialised: training goes on exactly alike,
    # with no second k-means initialisation.
    torch.manual_seed(2)
    expected = vq(x)
    torch.manual_seed(2)
    got = loaded(x)
    assert torch.equal(got.codes, expected.codes)
    assert torch.equal(loaded.codebook, vq.codebook)
    # An uninitialised state makes the next training batch initialise again.
    loaded.load_state_dict(VectorQuantizer(6, 2, heads=2).state_dict())
    assert not bool(loaded.initialized)
    loaded(x)
    assert bool(loaded.initialized)


@pytest.mark.parametrize("heads", [1, 2])
def test_a_checkpoint_taken_while_collecting_for_the_init_resumes_the_collection(tmp_path, heads):
    # Batches smaller than the codebook are collected until there are enough
    # for k-means: a checkpoint lost them, and the resumed quantizer collected
    # again from scratch (other codes than the run it was taken from).
    import io

    torch.manual_seed(0)
    vq = VectorQuantizer(64, 2, heads=heads)
    batches = [torch.randn(n, 2 * heads) for n in (40, 10, 30, 50)]
    vq(batches[0])
    vq(batches[1])
    buffer = io.BytesIO()
    torch.save(vq.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    resumed = VectorQuantizer(64, 2, heads=heads)
    resumed.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    for x in batches[2:]:
        torch.manual_seed(2)
        expected = vq(x)
        torch.manual_seed(2)
        assert torch.equal(resumed(x).codes, expected.codes)
    assert bool(resumed.initialized)
    assert resumed.state_dict().keys() == vq.state_dict().keys()  # no samples left
    for name, value in vq.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_state_dict_keys_stay_the_same_through_the_collection_for_the_init(tmp_path):
    """The collected batches had keys of their own only while the collection
    lasted: torch.distributed.checkpoint, which loads a checkpoint into the
    state_dict of the model as it stands, refused a checkpoint taken outside
    the collection ("Missing key"), and get_model_state_dict raised."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    torch.manual_seed(0)
    vq = VectorQuantizer(16, 2)
    fresh = copy.deepcopy(vq)
    keys = list(vq.state_dict())
    vq(torch.randn(5, 2))  # collected: fewer vectors than codes
    assert list(vq.state_dict()) == keys
    assert vq.state_dict()["init_collected"].tolist() == [5, 1]
    assert list(get_model_state_dict(vq)) == keys
    # Loaded in place both ways: outside the collection into a collecting
    # quantizer, and the collection into a new one.
    for source, target, vectors in ((fresh, copy.deepcopy(vq), 0), (vq, copy.deepcopy(fresh), 5)):
        dcp.save(source.state_dict(), checkpoint_id=tmp_path / str(vectors))
        state = target.state_dict()
        dcp.load(state, checkpoint_id=tmp_path / str(vectors))
        target.load_state_dict(state)
        assert target.init_collected.tolist() == [vectors, int(vectors > 0)]
        assert torch.equal(target.init_samples, source.init_samples)
    vq(torch.randn(20, 2))  # initialised
    assert list(vq.state_dict()) == keys
    assert vq.state_dict()["init_collected"].tolist() == [0, 0]


def test_checkpoints_of_earlier_releases_load():
    """Checkpoints that have no collected batches, or have them only while
    collecting, load strictly: before, during and after the collection."""
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 2)
    buffers = ("codebook", "ema_sums", "ema_counts", "initialized")
    before = {name: value for name, value in vq.state_dict().items() if name in buffers}
    vq(torch.randn(5, 2))
    during = {name: value for name, value in vq.state_dict().items() if name in buffers}
    during["init_samples"] = vq.init_samples[:, :5]
    during["init_sizes"] = torch.tensor([5])
    for state, collected in ((before, 0), (during, 5)):
        loaded = VectorQuantizer(16, 2)
        loaded.load_state_dict(state, strict=True)
        assert loaded.init_collected.tolist() == [collected, int(collected > 0)]
    assert torch.equal(loaded.init_samples, vq.init_samples)


def test_collected_batches_follow_the_module_to_a_device_and_stay_float32():
    torch.manual_seed(0)
    vq = VectorQuantizer(64, 2)
    vq(torch.randn(40, 2))
    moved = copy.deepcopy(vq).to("meta")
    assert moved.state_dict()["init_samples"].device.type == "meta"
    assert vq.half().state_dict()["init_samples"].dtype == torch.float32


def test_a_checkpoint_of_collected_batches_for_another_shape_is_refused():
    torch.manual_seed(0)
    vq = VectorQuantizer(64, 2)
    vq(torch.randn(40, 2))
    state = vq.state_dict()
    assert state["init_samples"].shape == (1, 64, 2)
    with pytest.raises(RuntimeError, match=r"Expected init_samples of shape \(1, 64, 3\), got"):
        VectorQuantizer(64, 3).load_state_dict(state, strict=False)
    for collected in ([64, 1], [40, 0], [-1, 1], [40]):
        state["init_collected"] = torch.tensor(collected)
        expected = r"Expected init_collected to be \[vectors < num_codes=64, batches >= 1 if any"
        with pytest.raises(RuntimeError, match=expected):
            VectorQuantizer(64, 2).load_state_dict(state)
    # A checkpoint of an earlier release: the vectors and one size per batch.
    legacy = {name: value for name, value in state.items() if name != "init_collected"}
    legacy["init_samples"], legacy["init_sizes"] = vq.init_samples[:, :40], torch.tensor([30])
    with pytest.raises(RuntimeError, match=r"Expected init_sizes to sum to 40, got 30\."):
        VectorQuantizer(64, 2).load_state_dict(legacy)


def test_load_state_dict_assign_keeps_float32_buffers():
    """load_state_dict(assign=True) of a half-precision checkpoint: the
    statistics stay float32, and training goes on (it raised on mixed dtypes)."""
    torch.manual_seed(0)
    vq = VectorQuantizer(6, 2)
    vq(torch.randn(40, 2))
    half = {name: t.half() if t.is_floating_point() else t for name, t in vq.state_dict().items()}
    loaded = VectorQuantizer(6, 2)
    loaded.load_state_dict(half, assign=True)
    for name in ("codebook", "ema_sums", "ema_counts"):
        assert getattr(loaded, name).dtype == torch.float32, name
        torch.testing.assert_close(getattr(loaded, name), half[name].float())
    out = loaded(torch.randn(40, 2))
    assert loaded.codebook.dtype == torch.float32
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_inputs_give_no_nan(dtype):
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, heads=2).to(dtype)
    assert all(b.dtype in (torch.float32, torch.bool) for b in vq.buffers())
    for _ in range(4):
        # |x|^2 of these vectors overflows float16: distances must not be half.
        x = (torch.randn(64, 8) * 300).to(dtype).requires_grad_()
        quantized, codes, loss = vq(x)
        assert quantized.dtype == dtype and quantized.shape == x.shape
        assert bool(torch.isfinite(quantized).all())
        assert loss.dtype == torch.float32 and bool(torch.isfinite(loss))
        loss.backward()
        assert bool(torch.isfinite(x.grad).all())
    assert vq.codebook.dtype == torch.float32
    assert bool(torch.isfinite(vq.codebook).all() and torch.isfinite(vq.ema_sums).all())
    vq.eval()
    quantized, codes, _ = vq(x)
    assert torch.equal(quantized, vq.lookup(codes).to(dtype))


@pytest.mark.parametrize("accelerator", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_float64_inputs_get_the_code_nearest_their_own_values(monkeypatch, accelerator, training):
    # Rounded to float32 first, 0.5 + 1e-12 was a tie between codes 0 and 1.
    if accelerator:
        monkeypatch.setattr(quantizer_module._device, "on_host", lambda device: False)
    vq = make(2, 1, [[0.0], [1.0]], [1.0, 1.0]).train(training)
    x = torch.tensor([[0.5 + 1e-12], [0.5 - 1e-12]], dtype=torch.float64)
    quantized, codes, _ = vq(x)
    assert codes.tolist() == [1, 0]
    assert quantized.dtype == torch.float64 and quantized.tolist() == [[1.0], [0.0]]
    assert vq.codebook.dtype == vq.ema_sums.dtype == torch.float32


def test_autocast_does_not_lower_the_precision_of_the_distances():
    torch.manual_seed(0)
    vq = VectorQuantizer(256, 16, kmeans_init=False).eval()
    x = torch.randn(2000, 16)
    expected = vq(x).codes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        quantized, codes, loss = vq(x)
    assert torch.equal(codes, expected)
    assert quantized.dtype == torch.float32 and loss.dtype == torch.float32


def test_float32_buffers_under_a_float64_default_dtype():
    # The buffers followed torch's default dtype, and the first EMA step
    # raised "expected dtype double for `end` but got dtype float".
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        vq = VectorQuantizer(4, 2, heads=2)
        assert all(b.dtype in (torch.float32, torch.bool) for b in vq.buffers())
        for _ in range(2):
            quantized, _, loss = vq(torch.randn(20, 4))
        assert quantized.dtype == torch.float64 and loss.dtype == torch.float32
        assert all(b.dtype in (torch.float32, torch.bool) for b in vq.buffers())
        assert bool(torch.isfinite(vq.codebook).all())
    finally:
        torch.set_default_dtype(previous)


def test_half_cast_module_keeps_float32_buffers():
    vq = VectorQuantizer(4, 2).half()
    assert vq.codebook.dtype == torch.float32
    vq.bfloat16().double()
    assert vq.ema_sums.dtype == torch.float32 and vq.initialized.dtype == torch.bool


def test_to_device(device):
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, heads=2).to(device)
    x = torch.randn(32, 4, device=device)
    quantized, codes, loss = vq(x)
    assert quantized.device.type == codes.device.type == loss.device.type == device
    assert all(b.device.type == device for b in vq.buffers())
    vq.eval()
    quantized, codes, _ = vq(x)
    assert torch.equal(quantized, vq.lookup(codes))


# -------------------------------------------------------------------- cosine


def test_cosine_metric_keeps_unit_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(6, 3, metric="cosine")
    for _ in range(3):
        x = torch.randn(50, 3) * 7
        quantized, codes, _ = vq(x)
    norms = torch.linalg.vector_norm(vq.codebook, dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    vq.eval()
    quantized, codes, _ = vq(x)
    cos = nn.functional.normalize(x, dim=-1) @ vq.codebook[0].T
    assert torch.equal(codes, cos.argmax(-1))
    torch.testing.assert_close(torch.linalg.vector_norm(quantized, dim=-1), torch.ones(50))


def test_cosine_rows_of_zeros_do_not_make_codes_zero():
    # Padding rows (zeros, no direction) had seeded codes in the k-means
    # initialisation and re-seeded dead codes: zero codes, which then
    # quantized rows to a non-unit vector.
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3, metric="cosine", heads=2, dead_code_threshold=0.5)
    for _ in range(10):
        x = torch.randn(64, 6)
        x[:48] = 0.0
        vq(x)
        norms = torch.linalg.vector_norm(vq.codebook, dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
    vq.eval()
    quantized, _, _ = vq(torch.randn(200, 6))
    norms = torch.linalg.vector_norm(quantized.unflatten(-1, (2, 3)), dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_cosine_codes_do_not_depend_on_extreme_row_norms():
    # Rows of norm ~1e21 (|x|^2 overflows float32) or ~1e-27 (below the
    # eps of torch.nn.functional.normalize) had all become zero vectors.
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    outputs = []
    for scale in (1.0, 2.0**70, 2.0**-90):
        torch.manual_seed(0)
        vq = VectorQuantizer(5, 4, metric="cosine")
        outputs.append(vq(x * scale))
    for output in outputs[1:]:
        assert torch.equal(output.codes, outputs[0].codes)
        torch.testing.assert_close(output.loss, outputs[0].loss)


@pytest.mark.parametrize("accelerator", [False, True])
def test_cosine_gradient_is_finite_for_rows_of_zeros(monkeypatch, accelerator):
    # A row of zeros (a ReLU encoder's dead output, a padding token) made the
    # commitment loss's gradient NaN (0 / 0 in the normalisation), and the
    # encoder's weights NaN after one optimiser step.
    if accelerator:
        monkeypatch.setattr(quantizer_module._device, "on_host", lambda device: False)
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 3, metric="cosine")
    vq(torch.randn(32, 3))
    x = torch.randn(8, 3)
    x[2] = 0.0
    x.requires_grad_(True)
    quantized, _, loss = vq(x)
    (quantized.sum() + loss).backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------- helpers


def test_usage_and_perplexity_of_the_last_batch():
    vq = make(4, 1, [[0.0], [1.0], [2.0], [3.0]], [1.0] * 4).eval()
    vq(torch.tensor([[0.0], [1.0], [2.0], [3.0]]))
    torch.testing.assert_close(vq.perplexity, torch.tensor([4.0]))
    torch.testing.assert_close(vq.usage, torch.tensor([1.0]))
    vq(torch.tensor([[0.1], [0.2], [-0.3]]))
    torch.testing.assert_close(vq.perplexity, torch.tensor([1.0]))
    torch.testing.assert_close(vq.usage, torch.tensor([0.25]))


def test_lookup_inverts_codes_and_forward_returns_the_named_tuple():
    torch.manual_seed(0)
    vq = VectorQuantizer(5, 3, heads=2).eval()
    x = torch.randn(2, 6, 6)
    out = vq(x)
    assert isinstance(out, QuantizerOutput)
    assert out.codes.shape == (2, 6, 2) and out.codes.dtype == torch.int64
    assert torch.equal(vq.lookup(out.codes), out.quantized)
    single = VectorQuantizer(5, 3).eval()
    out = single(x[..., :3])
    assert out.codes.shape == (2, 6)
    assert torch.equal(single.lookup(out.codes), out.quantized)


@pytest.mark.parametrize(
    "dtype",
    [torch.uint8, torch.int8, torch.int16, torch.int32],
    ids=["uint8", "int8", "int16", "int32"],
)
@pytest.mark.parametrize("heads", [1, 2])
def test_lookup_accepts_codes_of_any_integer_dtype(dtype, heads):
    # Tokens are often stored as uint8: as an index that dtype is a boolean
    # mask, which returned 3 of the 4 rows below, in the wrong order.
    vq = VectorQuantizer(4, 1, heads=heads, kmeans_init=False)
    vq.codebook.copy_(torch.arange(4.0 * heads).reshape(heads, 4, 1))
    codes = torch.tensor([3, 0, 2, 1]).unsqueeze(-1).expand(4, heads)
    codes = codes.squeeze(-1) if heads == 1 else codes
    assert torch.equal(vq.lookup(codes.to(dtype)), vq.lookup(codes))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_codes": 0}, ValueError, r"Expected num_codes to be >= 1, got 0\."),
        ({"num_codes": 2.0}, TypeError, r"Expected num_codes to be an int, got float\."),
        ({"dim": True}, TypeError, r"Expected dim to be an int, got bool\."),
        ({"heads": 0}, ValueError, r"Expected heads to be >= 1, got 0\."),
        ({"kmeans_iters": 0}, ValueError, r"Expected kmeans_iters to be >= 1, got 0\."),
        ({"metric": "manhattan"}, ValueError, r"Expected metric to be 'euclidean' or 'cosine'"),
        ({"decay": 1.0}, ValueError, r"Expected decay to be in \[0, 1\), got 1\.0\."),
        ({"decay": float("nan")}, ValueError, r"Expected decay to be in \[0, 1\), got nan\."),
        ({"decay": "0.9"}, TypeError, r"Expected decay to be a float, got str\."),
        ({"eps": 0.0}, ValueError, r"Expected eps to be > 0, got 0\.0\."),
        ({"commitment_weight": -1}, ValueError, r"Expected commitment_weight to be >= 0"),
        ({"dead_code_threshold": -0.5}, ValueError, r"dead_code_threshold to be in \[0, 1\)"),
        ({"dead_code_threshold": 1.0}, ValueError, r"dead_code_threshold to be in \[0, 1\)"),
        ({"kmeans_init": 1}, TypeError, r"Expected kmeans_init to be a bool, got int\."),
        ({"channel_dim": "1"}, TypeError, r"Expected channel_dim to be an int, got str\."),
    ],
)
def test_constructor_errors(kwargs, error, match):
    arguments = {"num_codes": 4, "dim": 2, **kwargs}
    with pytest.raises(error, match=match):
        VectorQuantizer(**arguments)


def test_constructor_accepts_numpy_numbers():
    # As the estimators do: numpy ints and float32 raised a TypeError.
    np = pytest.importorskip("numpy")
    vq = VectorQuantizer(np.int64(4), np.int32(2), heads=np.int64(2), decay=np.float32(0.5))
    assert (vq.num_codes, vq.dim, vq.heads) == (4, 2, 2) and type(vq.num_codes) is int
    assert vq.decay == 0.5 and type(vq.decay) is float
    assert vq.codebook.shape == (2, 4, 2)
    # A numpy bool (a flag read from an array or a sweep's grid) is a bool too:
    # it was refused with "Expected kmeans_init to be a bool, got bool."
    vq = VectorQuantizer(4, 2, kmeans_init=np.bool_(False))
    assert vq.kmeans_init is False


@on_the_cpu_paths_only
def test_forward_and_lookup_errors():
    vq = VectorQuantizer(4, 2, heads=3)
    with pytest.raises(
        ValueError,
        match=r"Expected x to be a non-empty tensor of shape \(\.\.\., 6\), got shape \(5, 2\)\.",
    ):
        vq(torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"got shape \(0, 6\)"):
        vq(torch.randn(0, 6))
    with pytest.raises(
        TypeError, match=r"Expected x to be a floating-point tensor, got torch\.int64\."
    ):
        vq(torch.ones(5, 6, dtype=torch.int64))
    with pytest.raises(
        TypeError, match=r"Expected codes to be an integer tensor, got torch\.float32\."
    ):
        vq.lookup(torch.zeros(2, 3))
    with pytest.raises(
        TypeError, match=r"Expected codes to be an integer tensor, got torch\.bool\."
    ):
        vq.lookup(torch.zeros(2, 3, dtype=torch.bool))
    # -1 (a padding token, say) returned the last code.
    for codes in (torch.tensor([[0, -1, 2]]), torch.tensor([[0, 4, 2]])):
        with pytest.raises(ValueError, match=r"Expected codes in \[0, num_codes=4\), got values"):
            vq.lookup(codes)
    with pytest.raises(
        ValueError, match=r"Expected codes in \[0, num_codes=4\), got values from -100 to 3\."
    ):
        VectorQuantizer(4, 2).lookup(torch.tensor([3, -100]))
    with pytest.raises(
        ValueError, match=r"Expected codes to be of shape \(\.\.\., heads=3\), got shape \(2, 2\)\."
    ):
        vq.lookup(torch.zeros(2, 2, dtype=torch.int64))


def test_mask_errors():
    vq = VectorQuantizer(4, 2)
    x = torch.randn(3, 5, 2)
    with pytest.raises(TypeError, match=r"Expected mask to be a bool tensor, got torch\.float32\."):
        vq(x, mask=torch.ones(3, 5))
    with pytest.raises(
        ValueError,
        match=r"Expected mask of shape \(3, 5\) \(x's shape without its last dimension\), "
        r"got shape \(3, 4\)\.",
    ):
        vq(x, mask=torch.ones(3, 4, dtype=torch.bool))


def test_channels_first_errors():
    vq = VectorQuantizer(4, 6, channel_dim=1)
    with pytest.raises(
        ValueError,
        match=r"Expected x to be a non-empty tensor with 6 entries along dimension "
        r"channel_dim=1, got shape \(4, 5, 6\)\.",
    ):
        vq(torch.randn(4, 5, 6))
    with pytest.raises(ValueError, match=r"channel_dim=1, got shape \(6,\)\."):
        vq(torch.randn(6))
    with pytest.raises(
        ValueError,
        match=r"Expected mask of shape \(4, 5\) \(x's shape without dimension channel_dim=1\), "
        r"got shape \(4, 6\)\.",
    ):
        vq(torch.randn(4, 6, 5), mask=torch.ones(4, 6, dtype=torch.bool))
    with pytest.raises(
        ValueError,
        match=r"Expected codes of at least 1 dimensions for channel_dim=1, got shape \(\)\.",
    ):
        vq.lookup(torch.tensor(3))


def test_lookup_checks_codes_on_an_accelerator_without_reading_them(accelerator_paths):
    # On a GPU -1 (a padding token) silently returned the last code: the
    # bounds are checked by a device-side assertion, with no host read
    # (torch._assert_async raises at once on CPU tensors).
    vq = VectorQuantizer(4, 2, heads=3)
    for codes in (torch.tensor([[0, -1, 2]]), torch.tensor([[0, 4, 2]])):
        with pytest.raises(RuntimeError, match=r"Expected codes in \[0, num_codes=4\)\."):
            vq.lookup(codes)
    codes = torch.tensor([[0, 3, 2], [1, 1, 1]])
    assert torch.equal(vq.lookup(codes), vq.codebook[torch.arange(3), codes].flatten(-2))


# --------------------------------------------------------------- distributed


def test_outside_torch_distributed_no_collective_is_called(monkeypatch):
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("collective called outside torch.distributed")

    monkeypatch.setattr(torch.distributed, "all_reduce", fail)
    monkeypatch.setattr(torch.distributed, "broadcast", fail)
    vq = VectorQuantizer(4, 2)
    for _ in range(2):
        vq(torch.randn(20, 2))
    assert bool(vq.initialized)


def test_distributed_is_detected_at_forward_time_with_one_flat_all_reduce(monkeypatch):
    vq = VectorQuantizer(4, 3, heads=2)  # built before "init_process_group"
    calls: list[tuple[str, tuple[int, ...]]] = []
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 1)

    def record(name: str):
        def collective(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            calls.append((name, tuple(tensor.shape)))

        return collective

    monkeypatch.setattr(torch.distributed, "broadcast", record("broadcast"))
    monkeypatch.setattr(torch.distributed, "all_reduce", record("all_reduce"))
    vq(torch.randn(20, 6))
    vq(torch.randn(20, 6))
    vq.eval()
    vq(torch.randn(20, 6))
    size = 2 * 4 * 3
    # Init: flag, codebook, sums, counts. Steps: sums, counts, reseed candidates.
    assert calls == [
        ("broadcast", (1 + 2 * size + 8,)),
        ("all_reduce", (2 * size + 8,)),
        ("all_reduce", (2 * size + 8,)),
    ]


def test_initialised_state_copied_into_the_buffers_skips_the_init(monkeypatch):
    # DDP copies rank 0's buffers into the other ranks without load_state_dict:
    # a rank must then not run the init (and its broadcast) on its own.
    torch.manual_seed(0)
    trained = VectorQuantizer(4, 2)
    trained(torch.randn(20, 2))
    fresh = VectorQuantizer(4, 2)
    for name, value in trained.state_dict().items():
        getattr(fresh, name).copy_(value)
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    calls: list[str] = []
    monkeypatch.setattr(torch.distributed, "broadcast", lambda *a, **k: calls.append("broadcast"))
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: calls.append("all_reduce"))
    fresh(torch.randn(20, 2))
    assert calls == ["all_reduce"]


def _gloo_worker(rank: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    # Different seeds: the ranks draw different initial codebooks and data.
    torch.manual_seed(100 + rank)
    quantizers = {
        "kmeans": VectorQuantizer(16, 3, heads=2, decay=0.8, dead_code_threshold=0.5),
        "cosine": VectorQuantizer(8, 4, metric="cosine", kmeans_init=False),
        # Padded channels-first sequences: 8 kept vectors per step and rank,
        # so the k-means init gathers the kept ones of two steps.
        "masked": VectorQuantizer(32, 3, channel_dim=1),
    }
    lengths = torch.tensor([[5], [3]]) if rank == 0 else torch.tensor([[7], [1]])
    mask = torch.arange(10) < lengths
    reseeded = 0
    for _ in range(6):
        for name, vq in quantizers.items():
            if name == "masked":
                x = torch.randn(2, 3, 10) + 3.0 * rank
                vq(x.masked_fill(~mask.unsqueeze(1), math.nan), mask=mask)
                continue
            x = torch.randn(64, vq.heads * vq.dim) + 3.0 * rank
            vq(x)
            if name == "kmeans":
                # Re-seeded codes are vectors of the first rank's batch.
                first = x.clone()
                torch.distributed.broadcast(first, src=0)
                rows = first.unflatten(-1, (vq.heads, vq.dim)).transpose(0, 1)  # (h, n, dim)
                equal = (vq.codebook[:, :, None] == rows[:, None]).all(-1).any(-1)
                reseeded += int(equal.sum())
    result = {name: vq.state_dict() for name, vq in quantizers.items()}
    # Under DistributedDataParallel, both ranks' half batches move the
    # codebook as one process given the whole batches does (k-means init
    # included), here rank 0 alone in a group of its own. No re-seeding: its
    # vectors are drawn from the first rank's half only.
    solo = torch.distributed.new_group([0])
    torch.manual_seed(0)
    batches = [torch.randn(2, 50, 4) + torch.tensor([0.0, 3.0]).view(2, 1, 1) for _ in range(4)]
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 4), VectorQuantizer(8, 4, decay=0.9, dead_code_threshold=0))
    reference = copy.deepcopy(model)
    reference[1].process_group = solo
    ddp = nn.parallel.DistributedDataParallel(model)
    torch.manual_seed(2)  # the first rank's k-means++ seeding
    for batch in batches:
        out = ddp(batch[rank])
        (out.quantized.square().sum() + out.loss).backward()
    result["ddp"] = model[1].state_dict()
    if rank == 0:
        torch.manual_seed(2)
        for batch in batches:
            reference(batch.flatten(0, 1))
        result["one process"] = reference[1].state_dict()
    torch.save({"state": result, "reseeded": reseeded}, os.path.join(outdir, f"rank{rank}.pt"))
    # Both ranks done before either tears down: rank 1, done first (rank 0
    # also runs the reference), aborted now and then in gloo's teardown
    # ("terminate called without an active exception") while DDP was alive.
    del ddp
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_keep_identical_codebooks(tmp_path):
    env = dict(os.environ)
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    command = [sys.executable, __file__, "gloo", str(_free_port()), str(tmp_path)]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the two gloo processes did not finish within 120 s")
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in ("kmeans", "cosine", "masked"):
        first, second = ranks[0]["state"][name], ranks[1]["state"][name]
        for key in first:
            assert torch.equal(first[key], second[key]), (name, key)
        assert bool(first["initialized"])
    # Dead codes were re-seeded along the way, identically on both ranks.
    assert ranks[0]["reseeded"] == ranks[1]["reseeded"] > 0
    for key, value in ranks[0]["state"]["one process"].items():
        torch.testing.assert_close(ranks[0]["state"]["ddp"][key], value, msg=key)


# ------------------------------------------------------------ torch.compile


class _TinyAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 6)
        # A positive threshold compiles the re-seeding path; none is dead here.
        self.quantizer = VectorQuantizer(8, 3, heads=2, dead_code_threshold=1e-3)
        self.decoder = nn.Linear(6, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantized, _, loss = self.quantizer(self.encoder(x))
        return nn.functional.mse_loss(self.decoder(quantized), x) + loss


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("aot_eager", id="aot_eager"),
        pytest.param("inductor", id="inductor"),
    ],
)
def test_compile_fullgraph_after_the_init_step(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _TinyAutoencoder()
    x = torch.randn(64, 8)
    model(x).backward()  # the init step, eager
    model.zero_grad(set_to_none=True)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    for _ in range(2):
        loss = compiled(x)
        loss.backward()
        expected = eager(x)
        expected.backward()
        torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model.encoder.weight.grad, eager.encoder.weight.grad)
    torch.testing.assert_close(model.quantizer.codebook, eager.quantizer.codebook)
    torch.testing.assert_close(model.quantizer.ema_counts, eager.quantizer.ema_counts)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_one_head_compiles_without_graph_breaks_to_eager_codes_loss_and_gradients(metric):
    """The default quantizer (one head): its EMA sums ended in a bincount,
    four graph breaks at every step under torch.compile."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    encoder = nn.Linear(8, 4)
    quantizer = VectorQuantizer(16, 4, metric=metric)
    x = torch.randn(128, 8)
    quantizer(encoder(x))  # the init step, eager
    eager_encoder, eager = copy.deepcopy(encoder), copy.deepcopy(quantizer)
    compiled = torch.compile(quantizer, backend="aot_eager")
    for step in range(3):
        torch.manual_seed(step)
        out = compiled(encoder(x * (1 + step)))
        (out.quantized.square().sum() + out.loss).backward()
        torch.manual_seed(step)
        expected = eager(eager_encoder(x * (1 + step)))
        (expected.quantized.square().sum() + expected.loss).backward()
        assert torch.equal(out.codes, expected.codes)
        torch.testing.assert_close(out.loss, expected.loss)
        torch.testing.assert_close(quantizer.codebook, eager.codebook)
    torch.testing.assert_close(encoder.weight.grad, eager_encoder.weight.grad)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


@pytest.mark.parametrize(
    ("backend", "training"),
    [
        pytest.param("aot_eager", True, id="aot_eager-train"),
        pytest.param("aot_eager", False, id="aot_eager-eval"),
        pytest.param("inductor", True, id="inductor-train"),
    ],
)
def test_compiled_torch_func_grad_of_a_step_equals_eager(backend, training):
    """torch.compile(fullgraph=True) around torch.func.grad of a training
    step: eager's gradients, EMA step and usage, with no graph break (the
    buffer writes inside the traced transform raised "would mutate a
    captured Tensor")."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = _TinyAutoencoder()
    x = torch.randn(64, 8)
    model(x)  # the init step, eager
    model.train(training)
    eager = copy.deepcopy(model)

    def loss(params, module, z):
        return torch.func.functional_call(module, params, (z,))

    step = torch.compile(torch.func.grad(loss), backend=backend, fullgraph=True)
    for i in range(2):
        params = {name: p.detach() for name, p in model.named_parameters()}
        gradients = step(params, model, x * (1 + i))
        params = {name: p.detach() for name, p in eager.named_parameters()}
        expected = torch.func.grad(loss)(params, eager, x * (1 + i))
        for name, value in expected.items():
            torch.testing.assert_close(gradients[name], value)
        for name, value in eager.quantizer.state_dict().items():
            torch.testing.assert_close(model.quantizer.state_dict()[name], value)
        assert torch.equal(model.quantizer.last_counts, eager.quantizer.last_counts)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_a_channels_first_step_under_autocast_compiles_fullgraph_to_eager(dtype):
    """A convolutional autoencoder's step under CPU autocast, compiled whole:
    half-precision feature maps (B, C, H, W), float32 statistics and loss,
    eager's codes, codebook and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "encoder": nn.Conv2d(3, 8, 3, padding=1),
            "quantizer": VectorQuantizer(16, 4, heads=2, channel_dim=1),
            "decoder": nn.Conv2d(8, 3, 3, padding=1),
        }
    )
    x = torch.randn(4, 3, 8, 8)

    def step(module, z):
        with torch.autocast("cpu", dtype=dtype):
            features = module["encoder"](z)
            out = module["quantizer"](features)
            decoded = module["decoder"](out.quantized)
        assert features.dtype == out.quantized.dtype == dtype
        assert out.loss.dtype == torch.float32
        return nn.functional.mse_loss(decoded.float(), z) + out.loss, out.codes

    step(model, x)[0].backward()  # the init step, eager
    model.zero_grad(set_to_none=True)
    eager = copy.deepcopy(model)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for i in range(2):
        (loss, codes), (expected, expected_codes) = (
            compiled(model, x * (1 + i)),
            step(eager, x * (1 + i)),
        )
        loss.backward()
        expected.backward()
        assert torch.equal(codes, expected_codes)
        torch.testing.assert_close(loss, expected)
    for name, value in eager["quantizer"].state_dict().items():
        buffer = model["quantizer"].state_dict()[name]
        assert buffer.dtype == value.dtype
        torch.testing.assert_close(buffer, value)
    torch.testing.assert_close(model["encoder"].weight.grad, eager["encoder"].weight.grad)


def test_compiled_torch_func_grad_runs_the_init_step_and_differentiates_a_replaced_codebook():
    torch._dynamo.reset()
    torch.manual_seed(0)
    vq, x = VectorQuantizer(8, 4), torch.randn(64, 4)
    eager = copy.deepcopy(vq)

    def objective(z, module):
        return module(z).quantized.square().sum()

    torch.manual_seed(1)
    gradient = torch.compile(torch.func.grad(objective), backend="aot_eager")(x, vq)
    torch.manual_seed(1)
    torch.testing.assert_close(gradient, torch.func.grad(objective)(x, eager))
    assert bool(vq.initialized)
    for name, value in eager.state_dict().items():
        assert torch.equal(vq.state_dict()[name], value), name
    vq.eval()
    book = torch.randn(1, 8, 4)

    def total(b):
        return torch.func.functional_call(vq, {"codebook": b}, (x,)).quantized.sum()

    compiled = torch.compile(torch.func.grad(total), backend="aot_eager", fullgraph=True)
    codes = torch.func.functional_call(vq, {"codebook": book}, (x,)).codes
    counts = torch.bincount(codes, minlength=8).float()
    torch.testing.assert_close(compiled(book), counts.reshape(1, 8, 1).expand(1, 8, 4))


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("aot_eager", id="aot_eager"),
        pytest.param("inductor", id="inductor"),
    ],
)
def test_a_model_compiled_before_its_first_step_initialises_eagerly(monkeypatch, backend):
    # The one-time k-means reads the host and draws from torch's generator:
    # traced, inductor drew its seeding with its own generator (other codes
    # than eager's: losses 0.03 apart) and compiled the whole k-means first.
    compiling, clustering = [], quantizer_module.kmeans

    def spy(*args, **kwargs):
        compiling.append(torch.compiler.is_compiling())
        return clustering(*args, **kwargs)

    monkeypatch.setattr(quantizer_module, "kmeans", spy)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _TinyAutoencoder()
    model.quantizer.dead_code_threshold = 0.0  # no draws after the init step
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend=backend)
    for step in range(3):
        x = torch.randn(64, 8) * (1 + step)
        torch.manual_seed(step)
        loss = compiled(x)
        loss.backward()
        torch.manual_seed(step)
        expected = eager(x)
        expected.backward()
        torch.testing.assert_close(loss, expected)
    assert compiling == [False, False]  # the compiled model's init step, then eager's
    for name, value in eager.quantizer.state_dict().items():
        torch.testing.assert_close(model.quantizer.state_dict()[name], value)
    torch.testing.assert_close(model.encoder.weight.grad, eager.encoder.weight.grad)


def test_a_mask_compiles_fullgraph_after_the_init_step():
    torch._dynamo.reset()
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 3, heads=2, dead_code_threshold=1e-3)
    x = torch.randn(4, 16, 6)
    mask = torch.arange(16) < torch.tensor([[16], [9], [3], [12]])
    quantizer(x, mask=mask)  # the init step, eager
    eager = copy.deepcopy(quantizer)
    compiled = torch.compile(quantizer, fullgraph=True, backend="aot_eager")
    for step in range(2):
        out, expected = compiled(x * (2 + step), mask=mask), eager(x * (2 + step), mask=mask)
        assert torch.equal(out.codes, expected.codes)
        torch.testing.assert_close(out.loss, expected.loss)
    torch.testing.assert_close(quantizer.codebook, eager.codebook)
    torch.testing.assert_close(quantizer.last_counts, eager.last_counts)


def test_cosine_compiles_fullgraph_and_traces():
    # Rows of extreme norms are found with a host read on the CPU, a branch
    # on data that torch.compile(fullgraph=True) and torch.jit.trace cannot
    # follow: compiled or traced, the rescaling takes no branch.
    torch._dynamo.reset()
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4, metric="cosine")
    x = torch.randn(64, 4)
    quantizer(x)  # the init step, eager
    eager = copy.deepcopy(quantizer)
    compiled = torch.compile(quantizer, fullgraph=True, backend="aot_eager")
    for scale in (1.0, 2.0**70):
        assert torch.equal(compiled(x * scale).codes, eager(x * scale).codes)
    torch.testing.assert_close(quantizer.codebook, eager.codebook)
    quantizer.eval()
    traced = torch.jit.trace(lambda v: quantizer(v).codes, x, check_trace=False)
    assert torch.equal(traced(x * 2.0**-90), quantizer(x).codes)


def test_jit_trace_in_eval_mode_gives_the_codes_of_new_inputs():
    # The CPU check writes its codes from a C++ kernel that a trace cannot
    # record: traced, the codes must come from tensor ops.
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4)
    quantizer(torch.randn(256, 4))
    quantizer.eval()
    example, x = torch.randn(64, 4), torch.randn(64, 4)
    traced = torch.jit.trace(lambda v: quantizer(v).codes, example, check_trace=False)
    assert torch.equal(traced(x), quantizer(x).codes)


# ------------------------------------------------------------------ example


def test_example_autoencoder_meets_the_acceptance_numbers():
    path = ROOT / "examples" / "vq_autoencoder.py"
    spec = importlib.util.spec_from_file_location("vq_autoencoder", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    report = example.main(300, verbose=False)
    assert report.error_quantized <= 1.5 * report.error_plain
    assert report.perplexity > report.num_codes / 2


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "gloo":
    torch.multiprocessing.spawn(_gloo_worker, args=(int(sys.argv[2]), sys.argv[3]), nprocs=2)


@pytest.mark.parametrize("offset", [1000.0, 1e4])
def test_inputs_far_from_the_origin_get_their_nearest_code(offset):
    # |c|^2 - 2 x.c of float32 inputs 1e4 from the origin rounds in steps of
    # about 8: without centring on the codebook, 4015 of 4096 codes were wrong.
    generator = torch.Generator().manual_seed(0)
    quantizer = VectorQuantizer(64, 8)
    x = offset + torch.randn(4096, 8, generator=generator)
    for _ in range(3):
        quantizer(x)
    quantizer.eval()
    codes = quantizer(x).codes
    table = ((x.double()[:, None] - quantizer.codebook[0].double()[None]) ** 2).sum(-1)
    chosen = table.gather(1, codes[:, None]).squeeze(1)
    assert bool((chosen <= table.min(1).values * (1 + 1e-4) + 1e-9).all())


@on_the_cpu_paths_only
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inputs_in_groups_far_apart_get_their_nearest_code(seed):
    # Two groups 1e4 apart, codes in both: centred on the codebook's mean the
    # rows still lie 5e3 from the origin, where |c|^2 - 2 x.c rounds in steps
    # larger than their distances to the codes: 13,583 of 20,000 codes were
    # wrong before the codes were checked.
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(20_000, 2, generator=generator)
    x[10_000:] += 1e4
    quantizer = VectorQuantizer(16, 2)
    for _ in range(4):
        quantizer(x)
    quantizer.eval()
    codes = quantizer(x).codes
    table = ((x.double()[:, None] - quantizer.codebook[0].double()[None]) ** 2).sum(-1)
    chosen = table.gather(1, codes[:, None]).squeeze(1)
    # float32 codes: distances agree to the rounding of the code's coordinates.
    assert bool((chosen <= table.min(1).values + 1e-3).all())


def _expansion_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The codes of a GPU forward (no checked search): the expansion path,
    as under torch.compile, on the CPU."""
    monkeypatch.setattr(quantizer_module._device, "traced", lambda: True)


def _wrong_codes(x: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor) -> int:
    table = ((x.double()[:, None] - codebook.double()[None]) ** 2).sum(-1)
    chosen = table.gather(1, codes[:, None]).squeeze(1)
    return int((chosen > table.min(1).values * (1 + 1e-5) + 1e-9).sum())


def test_expansion_codes_are_the_nearer_of_its_two_best(monkeypatch):
    """Groups 1e3 apart: the expansion's rounding decides many near ties
    wrongly; of its two best codes the nearer, from differences, is the
    nearest for most of those rows and never a farther code."""
    _expansion_path(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 16, generator=generator)
    x[4096:] += 1e3
    codebook = x[torch.randperm(8192, generator=generator)[:512]]
    codebook = codebook + 0.05 * torch.randn(512, 16, generator=generator)
    codes = quantizer_module._nearest_codes(x[None], codebook[None], "euclidean")[0]
    offset = codebook.mean(0)
    centred = codebook - offset
    plain = torch.addmm(centred.square().sum(-1), x - offset, centred.T, alpha=-2.0).argmin(1)
    table = ((x.double()[:, None] - codebook.double()[None]) ** 2).sum(-1)
    ours = table.gather(1, codes[:, None]).squeeze(1)
    theirs = table.gather(1, plain[:, None]).squeeze(1)
    assert bool((ours <= theirs).all())
    assert _wrong_codes(x, codebook, codes) * 4 < _wrong_codes(x, codebook, plain)


def test_expansion_codes_with_bfloat16_products_are_the_nearest(monkeypatch, bfloat16_products):
    """With products in bfloat16 (as TF32 on a GPU, rounding more), 35 of
    8,192 codes from the expansion alone were not the nearest."""
    _expansion_path(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 64, generator=generator)
    codebook = x[torch.randperm(8192, generator=generator)[:512]]
    codebook = codebook + 0.05 * torch.randn(512, 64, generator=generator)
    codes = quantizer_module._nearest_codes(x[None], codebook[None], "euclidean")[0]
    assert _wrong_codes(x, codebook, codes) == 0


def test_one_code_on_the_expansion_path(monkeypatch):
    _expansion_path(monkeypatch)
    quantizer = VectorQuantizer(1, 4)
    assert quantizer(torch.randn(32, 4)).codes.eq(0).all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_product_codes_are_scored_in_blocks_that_fit_the_budget(monkeypatch, metric):
    # The products took (h, n, k) scores at once: 8 GiB for 262,144 vectors
    # against 8,192 codes (cosine on the CPU too).
    _expansion_path(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1000, 4, generator=generator)
    codebook = torch.randn(2, 16, 4, generator=generator)
    if metric == "cosine":
        x, codebook = nn.functional.normalize(x, dim=-1), nn.functional.normalize(codebook, dim=-1)
    expected = quantizer_module._nearest_codes(x, codebook, metric)
    heights = []
    block_codes = quantizer_module._block_codes

    def recording(rows: torch.Tensor, *args: Any) -> torch.Tensor:
        heights.append(rows.shape[1])
        return block_codes(rows, *args)

    monkeypatch.setattr(quantizer_module, "_block_codes", recording)
    monkeypatch.setattr(quantizer_module, "DEFAULT_MEMORY_BUDGET", 4 * 2 * 16 * 300)
    codes = quantizer_module._nearest_codes(x, codebook, metric)
    assert heights == [300, 300, 300, 100]
    assert torch.equal(codes, expected)


@pytest.mark.parametrize("paths", ["host", "accelerator"])
@pytest.mark.parametrize("exponent", [64, -100])
def test_codes_of_float32_inputs_at_extreme_scales_are_the_unit_scale_ones(
    request, paths, exponent
):
    # The accelerator's codes come from the expansion: near 2^64 the squared
    # norms of the codes were inf (511 of 512 codes wrong), near 1e-30 0
    # (483 of 512 wrong). Scored scaled by a power of two, an exact change,
    # they must be the unit-scale codes.
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    gen = torch.Generator().manual_seed(0)
    codebook = torch.randn(16, 8, generator=gen)
    x = torch.randn(512, 8, generator=gen)
    vq = make(16, 8, codebook.tolist(), [1.0] * 16).eval()
    expected = vq(x).codes
    exact = torch.cdist(x.double(), codebook.double()).argmin(1)
    assert torch.equal(expected, exact)
    far = make(16, 8, (codebook * 2.0**exponent).tolist(), [1.0] * 16).eval()
    assert torch.equal(far(x * 2.0**exponent).codes, expected)


def test_a_cpu_quantizer_ignores_the_global_torch_defaults(torch_defaults_changed):
    # A quantizer built on the CPU trains there under set_default_device
    # (CUDA in a training script, meta here) and set_default_dtype(float64)
    # as it does without: its k-means initialisation failed ("Tensor.item()
    # cannot be called on meta tensors"), a checkpoint taken while it
    # collected batches for it held a meta tensor, and dead codes were
    # reseeded from float64 draws (other vectors than without the default).
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, generator=generator) * 0.1
    x += torch.randint(0, 2, (512, 1), generator=generator) * 5.0

    def built() -> list[VectorQuantizer]:
        torch.manual_seed(0)
        options = {"decay": 0.5, "dead_code_threshold": 0.5}
        return [
            VectorQuantizer(16, 3, kmeans_init=True, **options),
            VectorQuantizer(16, 3, kmeans_init=False, **options),
        ]

    def results(quantizers: list[VectorQuantizer]) -> list:
        torch.manual_seed(1)
        out: list = []
        for vq in quantizers:
            vq.train()
            inputs = x[:8].clone().requires_grad_(True)
            output = vq(inputs)
            (output.quantized.sum() + output.loss).backward()
            out += [output.quantized.detach(), output.codes, inputs.grad, vq.state_dict()]
            for start in range(8, 512, 128):
                output = vq(x[start : start + 128])
                out += [output.quantized, output.codes, output.loss.detach()]
            vq.eval()
            out += [vq(x).codes, vq.state_dict()]
        return out

    expected = results(built())
    quantizers = built()
    with torch_defaults_changed():
        got = results(quantizers)
    assert_identical(got, expected)
