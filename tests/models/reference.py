"""Helpers for whole-model parity with transformers: a saved random reference model and gradient checks."""

import os

import numpy as np
import pytest


def transformers_or_skip():
    """Import transformers. Skips locally without it; fails in CI, where the parity tests must run."""
    try:
        import transformers
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("transformers is required in CI (pip install -e '.[test]')")
        pytest.skip("transformers not installed")
    return transformers


def saved_reference(torch, model_cls, hf_config, folder, perturb):
    """A random-weight transformers model in eval mode, parameters named by ``perturb(name)`` shifted by
    0.1 N(0, 1) (so norms and biases are not trivial), saved as safetensors into ``folder``."""
    torch.manual_seed(0)
    ref = model_cls(hf_config).float().eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if perturb(name):
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(folder, safe_serialization=True)
    return ref


def assert_gradients_match(model, ref, rtol=1e-3, transpose=lambda name: False):
    """Every gradient of ``model`` equals the torch gradient of the same-named parameter of ``ref`` to ``rtol``
    of the larger of that tensor's largest gradient and 1e-3 of the largest gradient overall (a gradient that
    is exactly zero in exact arithmetic, such as BERT's key bias, holds only rounding noise on both sides).
    ``transpose(name)`` marks torch tensors stored transposed (GPT-2's Conv1D)."""
    theirs = {n: p.grad.numpy() for n, p in ref.named_parameters() if p.grad is not None}
    theirs = {n: (g.T if transpose(n) else g) for n, g in theirs.items()}
    ours = model.gradients()
    assert set(ours) <= set(theirs), sorted(set(ours) - set(theirs))
    floor = 1e-3 * max(np.abs(theirs[n]).max() for n in ours)
    for name, g in ours.items():
        want = theirs[name]
        err = np.abs(g - want).max() / max(np.abs(want).max(), floor)
        assert err < rtol, f"{name}: relative error {err:.2e}"
