"""Tests for common.flows: coupling flows, subnet constructors and the flow NLL loss."""

from __future__ import annotations

import math
import pickle
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from common.flows import (
    FlowNLLLoss,
    FlowOutput,
    LocalFlowOutput,
    build_coupling_flow,
    cbam_subnet_constructor,
    conv_subnet_constructor,
    dsam_subnet_constructor,
    flow_nll,
    full_precision,
    invert_flow,
    position_nll,
    positional_encoding_map,
    run_flow,
    run_flow_with_local_log_det,
)

SUBNETS = [
    # Conv -> ReLU -> Conv -> CBAM, as in MS-NF
    cbam_subnet_constructor(hidden_channels=16, reduction=4),
    # Conv -> ReLU -> Conv, no attention
    conv_subnet_constructor(hidden_channels=16),
    # DSAM (IDConv spatial attention -> LayerNorm -> Conv -> ReLU -> Conv), DNFAD's dynamic coupling
    dsam_subnet_constructor(hidden_channels=16, idconv_groups=3),
]
SUBNET_IDS = ["cbam", "conv", "dsam"]

SCENARIOS = [
    # 4 channels, square 6x6, batch 2
    (4, (2, 4, 6, 6)),
    # 8 channels, non-square 5x7, batch 2
    (8, (2, 8, 5, 7)),
    # odd channel count (halves of 2 and 3), 4x4, batch 2
    (5, (2, 5, 4, 4)),
]
SCENARIO_IDS = ["c4-6x6", "c8-5x7", "c5-4x4"]

N_BLOCKS = 3
CLAMP = 2.0

# float32 tolerances for the round trip and the forward/reverse log-determinants
ROUND_TRIP_ATOL = 1e-5
LOGDET_ATOL = 1e-4
LOGDET_RTOL = 1e-5
# float64 tolerances for the analytic log-determinant against the numerical Jacobian
JACOBIAN_ATOL = 1e-4
JACOBIAN_RTOL = 1e-4

JACOBIAN_METHODS = ["autograd", "central-difference"]

BAD_FLOW_ARGS = [
    # a coupling needs two halves
    ({"channels": 1}, ValueError, "channels"),
    # at least one block
    ({"n_blocks": 0}, ValueError, "n_blocks"),
    # the soft-clamp bound must be positive and finite
    ({"clamp": 0.0}, ValueError, "clamp"),
    ({"clamp": -1.0}, ValueError, "clamp"),
    ({"clamp": math.inf}, ValueError, "clamp"),
    # the subnet factory must be callable
    ({"subnet_constructor": 16}, TypeError, "subnet_constructor"),
]
BAD_FLOW_IDS = ["channels1", "n_blocks0", "clamp0", "clamp-negative", "clamp-inf", "subnet-not-callable"]

BAD_SUBNET_ARGS = [
    (lambda: cbam_subnet_constructor(hidden_channels=0), "hidden_channels"),
    (lambda: cbam_subnet_constructor(reduction=0), "reduction"),
    (lambda: cbam_subnet_constructor(kernel_size=2), "kernel_size"),
    (lambda: conv_subnet_constructor(hidden_channels=-4), "hidden_channels"),
    (lambda: conv_subnet_constructor(kernel_size=0), "kernel_size"),
]
BAD_SUBNET_IDS = ["cbam-hidden0", "cbam-reduction0", "cbam-kernel-even", "conv-hidden-negative", "conv-kernel0"]


class _TrainOutput(NamedTuple):
    """A network's training output, as passed by MONAI's SupervisedTrainer to the loss."""

    flows: list[FlowOutput]


def _perturb_zero_layers(flow: nn.Module, scale: float, seed: int) -> None:
    """Give the zero-initialised last layers of the subnets small random values.

    At initialisation every block is the identity, so a round trip or a log-determinant check would pass trivially;
    small weights make the flow a non-trivial map while keeping its scales moderate.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in flow.parameters():
            if param.requires_grad and torch.count_nonzero(param) == 0:
                param.copy_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def _make_flow(channels: int, subnet, permute: bool = True, seed: int = 0, perturb: float | None = 0.05) -> nn.Module:
    flow = build_coupling_flow(channels, N_BLOCKS, subnet, clamp=CLAMP, permute=permute, seed=seed)
    if perturb is not None:
        _perturb_zero_layers(flow, perturb, seed)
    return flow.eval()


def _numerical_jacobian(func, x: torch.Tensor, method: str) -> torch.Tensor:
    """Jacobian ``d func(x) / dx`` of a map between flat vectors, by autograd or central differences."""
    if method == "autograd":
        return torch.autograd.functional.jacobian(func, x)
    h = 1e-6
    columns = []
    for i in range(x.numel()):
        step = torch.zeros_like(x)
        step[i] = h
        columns.append((func(x + step) - func(x - step)) / (2 * h))
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize(("channels", "shape"), SCENARIOS, ids=SCENARIO_IDS)
@pytest.mark.parametrize("subnet", SUBNETS, ids=SUBNET_IDS)
def test_round_trip_and_logdet_sign(subnet, channels: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    flow = _make_flow(channels, subnet)
    x = torch.randn(shape)
    with torch.no_grad():
        z, log_jac_det = run_flow(flow, x)
        x_rec, log_jac_det_rev = flow(z, rev=True)
    assert z.shape == x.shape
    assert log_jac_det.shape == (shape[0],)
    # the perturbed flow is not the identity
    assert log_jac_det.abs().min() > 1e-3, f"log-det too close to 0: {log_jac_det.tolist()}"

    err = (x_rec - x).abs().max().item()
    assert err < ROUND_TRIP_ATOL, f"round trip x -> z -> x: max abs err {err:.3e} >= {ROUND_TRIP_ATOL}"
    err_inv = (invert_flow(flow, z) - x).abs().max().item()
    assert err_inv < ROUND_TRIP_ATOL, f"invert_flow: max abs err {err_inv:.3e} >= {ROUND_TRIP_ATOL}"

    logdet_err = (log_jac_det + log_jac_det_rev).abs().max().item()
    bound = LOGDET_ATOL + LOGDET_RTOL * log_jac_det.abs().max().item()
    assert logdet_err < bound, f"log-det(forward) + log-det(reverse): max abs err {logdet_err:.3e} >= {bound:.3e}"


@pytest.mark.parametrize("method", JACOBIAN_METHODS, ids=JACOBIAN_METHODS)
@pytest.mark.parametrize("subnet", SUBNETS, ids=SUBNET_IDS)
def test_logdet_matches_numerical_jacobian(subnet, method: str) -> None:
    # 4 channels at 4x4: a 64 x 64 Jacobian, in float64
    shape = (1, 4, 4, 4)
    flow = _make_flow(4, subnet, perturb=0.1).double()
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64)

    def func(v: torch.Tensor) -> torch.Tensor:
        return run_flow(flow, v.view(shape)).z.flatten()

    jacobian = _numerical_jacobian(func, x.flatten(), method)
    assert jacobian.shape == (64, 64)
    sign, numerical = torch.linalg.slogdet(jacobian)
    with torch.no_grad():
        analytic = run_flow(flow, x).log_jac_det[0]
    assert sign != 0
    assert analytic.abs() > 1e-2, f"log-det too close to 0: {analytic.item()}"
    err = (analytic - numerical).abs().item()
    bound = JACOBIAN_ATOL + JACOBIAN_RTOL * numerical.abs().item()
    assert err < bound, (
        f"analytic log-det {analytic.item():.6f} vs {method} {numerical.item():.6f}: abs err {err:.3e} >= {bound:.3e}"
    )


@pytest.mark.parametrize(("channels", "shape"), SCENARIOS, ids=SCENARIO_IDS)
@pytest.mark.parametrize("subnet", SUBNETS, ids=SUBNET_IDS)
def test_identity_at_initialisation(subnet, channels: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape)
    zeros = torch.zeros(shape[0])
    flow = _make_flow(channels, subnet, permute=False, perturb=None)
    with torch.no_grad():
        z, log_jac_det = run_flow(flow, x)
    assert torch.equal(z, x)
    assert torch.equal(log_jac_det, zeros)
    # with permutations, z holds the same values per pixel in another channel order
    flow = _make_flow(channels, subnet, permute=True, perturb=None)
    with torch.no_grad():
        z, log_jac_det = run_flow(flow, x)
    assert torch.equal(z.sort(dim=1).values, x.sort(dim=1).values)
    assert torch.equal(log_jac_det, zeros)


@pytest.mark.parametrize("subnet", SUBNETS, ids=SUBNET_IDS)
def test_one_flow_runs_on_several_spatial_sizes(subnet) -> None:
    torch.manual_seed(0)
    flow = _make_flow(8, subnet)
    for shape in [(2, 8, 5, 7), (1, 8, 9, 4), (3, 8, 16, 16)]:
        x = torch.randn(shape)
        with torch.no_grad():
            z, log_jac_det = run_flow(flow, x)
            err = (invert_flow(flow, z) - x).abs().max().item()
        assert z.shape == x.shape
        assert log_jac_det.shape == (shape[0],)
        assert err < ROUND_TRIP_ATOL, f"round trip at {shape}: max abs err {err:.3e} >= {ROUND_TRIP_ATOL}"


def test_soft_clamp_formula_and_bound() -> None:
    flow = build_coupling_flow(4, 2, conv_subnet_constructor(8), clamp=CLAMP, seed=0)
    u = torch.tensor([-1e6, -3.0, -0.5, 0.0, 0.5, 3.0, 1e6])
    block = flow[0]
    expected = (2 * CLAMP / math.pi) * torch.atan(u / CLAMP)
    torch.testing.assert_close(block.clamp * block.f_clamp(u), expected)
    # huge subnet outputs: every element is scaled by at most exp(clamp) per block
    with torch.no_grad():
        for param in flow.parameters():
            if param.requires_grad:
                param.fill_(1e3)
    x = torch.rand(2, 4, 3, 3) + 0.5
    with torch.no_grad():
        log_jac_det = run_flow(flow, x).log_jac_det
    bound = 2 * CLAMP * x[0].numel()
    assert torch.isfinite(log_jac_det).all()
    assert (log_jac_det.abs() <= bound).all(), f"|log-det| {log_jac_det.tolist()} exceeds {bound}"
    assert (log_jac_det.abs() > 0.9 * bound).all(), "saturated scales should approach the clamp bound"


def test_seed_fixes_flow_without_touching_global_rng() -> None:
    subnet = cbam_subnet_constructor(hidden_channels=8, reduction=4)
    np_before = np.random.get_state()[1].copy()
    torch_before = torch.get_rng_state().clone()
    first = build_coupling_flow(8, 3, subnet, seed=7)
    second = build_coupling_flow(8, 3, subnet, seed=7)
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert torch.equal(torch.get_rng_state(), torch_before)
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    for key in first_state:
        assert torch.equal(first_state[key], second_state[key]), f"{key} differs for the same seed"
    # every block gets its own permutation
    assert not torch.equal(first[1].perm, first[3].perm)
    other = build_coupling_flow(8, 3, subnet, seed=8)
    assert not torch.equal(first[1].perm, other[1].perm)


def test_flow_pickles() -> None:
    torch.manual_seed(0)
    flow = _make_flow(4, cbam_subnet_constructor(hidden_channels=8, reduction=4))
    restored = pickle.loads(pickle.dumps(flow))
    x = torch.randn(1, 4, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(run_flow(restored, x).z, run_flow(flow, x).z)
    # the factories themselves pickle, so configs and checkpoints can hold them
    assert callable(pickle.loads(pickle.dumps(conv_subnet_constructor(8))))


def test_training_step_gives_finite_gradients() -> None:
    torch.manual_seed(0)
    flow = build_coupling_flow(4, 2, cbam_subnet_constructor(hidden_channels=8, reduction=4), seed=0)
    loss = FlowNLLLoss()(
        [run_flow(flow, torch.randn(2, 4, 6, 6)), run_flow(flow, torch.randn(2, 4, 3, 3))], torch.zeros(2)
    )
    loss.backward()
    grads = {name: p.grad for name, p in flow.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the zero-initialised last convolutions learn from the first step
    last_conv_grads = [g for name, g in grads.items() if name.endswith((".subnet1.2.weight", ".subnet2.2.weight"))]
    assert len(last_conv_grads) == 4
    assert all(g.abs().sum() > 0 for g in last_conv_grads)


def test_flow_nll_hand_example() -> None:
    # sample 0: (0.5 * (1 + 4) - 0.5) / 2 = 1.0; sample 1: (0 - (-1)) / 2 = 0.5
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0]]).view(2, 2, 1, 1)
    log_jac_det = torch.tensor([0.5, -1.0])
    torch.testing.assert_close(flow_nll(z, log_jac_det), torch.tensor([1.0, 0.5]))


def test_flow_nll_is_gaussian_nll_without_constant() -> None:
    torch.manual_seed(0)
    z = torch.randn(3, 4, 5, 6)
    log_jac_det = torch.randn(3)
    n_elements = 4 * 5 * 6
    log_prob = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(dim=1)
    expected = -(log_prob + log_jac_det) / n_elements - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(flow_nll(z, log_jac_det), expected)


def test_flow_nll_loss_sums_scales_and_averages_batch() -> None:
    torch.manual_seed(0)
    outputs = [
        FlowOutput(torch.randn(2, 4, 8, 8), torch.randn(2)),
        FlowOutput(torch.randn(2, 8, 4, 4), torch.randn(2)),
    ]
    per_sample = flow_nll(*outputs[0]) + flow_nll(*outputs[1])
    loss = FlowNLLLoss()
    value = loss(outputs)
    assert value.ndim == 0
    torch.testing.assert_close(value, per_sample.mean())
    # targets are ignored
    torch.testing.assert_close(loss(outputs, torch.randn(2, 1, 8, 8)), value)
    # plain (z, log_jac_det) tuples and a single output are accepted
    torch.testing.assert_close(loss([tuple(o) for o in outputs]), value)
    torch.testing.assert_close(loss(outputs[0]), flow_nll(*outputs[0]).mean())
    # a network's training NamedTuple with a `flows` field
    torch.testing.assert_close(loss(_TrainOutput(flows=outputs), torch.zeros(2)), value)
    torch.testing.assert_close(FlowNLLLoss(reduction="sum")(outputs), per_sample.sum())
    torch.testing.assert_close(FlowNLLLoss(reduction="none")(outputs), per_sample)


def test_flow_nll_loss_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="^reduction must be one of"):
        FlowNLLLoss(reduction="median")
    with pytest.raises(ValueError, match="^flow_outputs must hold"):
        FlowNLLLoss()([])
    mismatched = [
        FlowOutput(torch.randn(2, 4, 2, 2), torch.randn(2)),
        FlowOutput(torch.randn(3, 4, 2, 2), torch.randn(3)),
    ]
    with pytest.raises(ValueError, match="^flow_outputs must share one batch size"):
        FlowNLLLoss()(mismatched)
    # a nested list (e.g. the training NamedTuple's fields passed as a sequence) is not a (z, log_jac_det) pair
    with pytest.raises(TypeError, match=r"^flow_outputs\[0\] must be a FlowOutput"):
        FlowNLLLoss()([mismatched])
    with pytest.raises(ValueError, match="^log_jac_det must have shape"):
        flow_nll(torch.randn(2, 4, 2, 2), torch.randn(2, 1))
    with pytest.raises(ValueError, match="^z must have shape"):
        flow_nll(torch.randn(2), torch.randn(2))


@pytest.mark.parametrize(("overrides", "error", "arg_name"), BAD_FLOW_ARGS, ids=BAD_FLOW_IDS)
def test_bad_flow_arguments_raise(overrides: dict, error: type[Exception], arg_name: str) -> None:
    kwargs = {"channels": 4, "n_blocks": 2, "subnet_constructor": conv_subnet_constructor(8)} | overrides
    with pytest.raises(error, match=rf"^{arg_name} must"):
        build_coupling_flow(**kwargs)


@pytest.mark.parametrize(("make", "arg_name"), BAD_SUBNET_ARGS, ids=BAD_SUBNET_IDS)
def test_bad_subnet_arguments_raise(make, arg_name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{arg_name} must"):
        make()


def test_run_flow_rejects_wrong_input_shape() -> None:
    flow = build_coupling_flow(4, 1, conv_subnet_constructor(8), seed=0)
    with pytest.raises(ValueError, match=r"^x must be a tensor of shape \(B, 4, H, W\)"):
        run_flow(flow, torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"^z must be a tensor of shape \(B, 4, H, W\)"):
        invert_flow(flow, torch.randn(4, 5, 5))


@pytest.mark.parametrize("subnet", SUBNETS, ids=SUBNET_IDS)
def test_local_log_det_sums_to_the_flow_log_det(subnet) -> None:
    flow = _make_flow(6, subnet, perturb=0.1)
    x = torch.randn(2, 6, 5, 7)
    out = run_flow_with_local_log_det(flow, x)
    reference = run_flow(flow, x)
    assert torch.allclose(out.z, reference.z)
    assert out.log_jac_map.shape == (2, 1, 5, 7)
    assert torch.allclose(out.log_jac_map.sum(dim=(1, 2, 3)), reference.log_jac_det, atol=1e-4)
    assert out.log_jac_map.abs().sum() > 0
    nll = position_nll(out.z, out.log_jac_map)
    assert torch.allclose(nll.sum(dim=(1, 2, 3)), 0.5 * out.z.pow(2).sum(dim=(1, 2, 3)) - out.log_jac_det, atol=1e-4)


def test_local_log_det_hooks_are_removed() -> None:
    flow = _make_flow(4, SUBNETS[1])
    run_flow_with_local_log_det(flow, torch.randn(1, 4, 3, 3))
    assert all(not m._forward_hooks for m in flow.modules())


def test_position_nll_rejects_mismatched_grids() -> None:
    with pytest.raises(ValueError, match="same grid"):
        position_nll(torch.zeros(1, 4, 3, 3), torch.zeros(1, 1, 3, 2))


def test_flow_nll_loss_on_the_foreground_weighs_positions() -> None:
    # one scale, C = 2, 2x2 grid; position NLL = 0.5 * 2 * z^2 - share, z = 1, 2, 3, 4 and shares 0
    z = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).expand(1, 2, 2, 2)
    share = torch.zeros(1, 1, 2, 2)
    item = LocalFlowOutput(z, share.flatten(1).sum(dim=1), share)
    # foreground covers the left column of cells and half of the top-right one at a 4x4 input
    foreground = torch.zeros(1, 1, 4, 4)
    foreground[..., :, :2] = 1.0
    foreground[..., 0, 2] = 1.0
    foreground[..., 1, 2] = 1.0
    weights = torch.tensor([[1.0, 0.5], [1.0, 0.0]])
    nll = torch.tensor([[1.0, 4.0], [9.0, 16.0]])
    expected = float((weights * nll).sum() / (weights.sum() * 2))
    assert FlowNLLLoss(foreground_only=True)([item], foreground).item() == pytest.approx(expected)
    # all-foreground weights give the plain per-element loss
    plain = FlowNLLLoss()([FlowOutput(z, item.log_jac_det)]).item()
    assert FlowNLLLoss(foreground_only=True)([item], torch.ones(1, 1, 4, 4)).item() == pytest.approx(plain)


def test_flow_nll_loss_on_the_foreground_needs_masks_and_local_outputs() -> None:
    z = torch.zeros(1, 2, 2, 2)
    with pytest.raises(TypeError, match="LocalFlowOutput"):
        FlowNLLLoss(foreground_only=True)([FlowOutput(z, torch.zeros(1))], torch.ones(1, 1, 2, 2))
    item = LocalFlowOutput(z, torch.zeros(1), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="foreground masks"):
        FlowNLLLoss(foreground_only=True)([item], None)
    with pytest.raises(TypeError, match="True or False"):
        FlowNLLLoss(foreground_only="false")


@pytest.mark.parametrize("method", JACOBIAN_METHODS, ids=JACOBIAN_METHODS)
@pytest.mark.parametrize("subnet", SUBNETS, ids=SUBNET_IDS)
def test_conditional_flow_inverts_and_its_logdet_matches_the_numerical_jacobian(subnet, method: str) -> None:
    # 4 channels at 4x4 conditioned on a 4-channel positional map: the Jacobian is taken w.r.t. x only
    shape = (1, 4, 4, 4)
    flow = build_coupling_flow(4, N_BLOCKS, subnet, clamp=CLAMP, seed=0, condition_channels=4)
    _perturb_zero_layers(flow, 0.1, 0)
    flow = flow.eval().double()
    condition = positional_encoding_map(4, 4, 4).double()
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64)

    def func(v: torch.Tensor) -> torch.Tensor:
        return run_flow(flow, v.view(shape), condition).z.flatten()

    sign, numerical = torch.linalg.slogdet(_numerical_jacobian(func, x.flatten(), method))
    with torch.no_grad():
        out = run_flow_with_local_log_det(flow, x, condition)
        x_rec = invert_flow(flow, out.z, condition)
    assert sign != 0
    assert out.log_jac_det[0].abs() > 1e-2, f"log-det too close to 0: {out.log_jac_det.item()}"
    bound = JACOBIAN_ATOL + JACOBIAN_RTOL * numerical.abs().item()
    assert (out.log_jac_det[0] - numerical).abs().item() < bound
    assert torch.allclose(out.log_jac_map.sum(dim=(1, 2, 3)), out.log_jac_det)
    assert (x_rec - x).abs().max().item() < 1e-10


def test_the_condition_changes_the_latent() -> None:
    flow = build_coupling_flow(4, 2, conv_subnet_constructor(8), seed=0, condition_channels=4)
    _perturb_zero_layers(flow, 0.1, 0)
    x = torch.randn(1, 4, 4, 4)
    condition = positional_encoding_map(4, 4, 4)
    with torch.no_grad():
        z_a = run_flow(flow, x, condition).z
        z_b = run_flow(flow, x, condition.flip(-1)).z
    assert (z_a - z_b).abs().max() > 1e-3


def test_run_flow_checks_the_condition() -> None:
    conditional = build_coupling_flow(4, 1, conv_subnet_constructor(8), seed=0, condition_channels=4)
    x = torch.randn(2, 4, 3, 5)
    with pytest.raises(ValueError, match=r"^condition must be a tensor of shape \(2, 4, 3, 5\)"):
        run_flow(conditional, x)
    with pytest.raises(ValueError, match=r"^condition must be a tensor of shape \(2, 4, 3, 5\)"):
        run_flow(conditional, x, torch.zeros(2, 4, 3, 4))
    plain = build_coupling_flow(4, 1, conv_subnet_constructor(8), seed=0)
    with pytest.raises(ValueError, match="^condition was given to an unconditional flow"):
        run_flow(plain, x, torch.zeros(2, 4, 3, 5))
    with pytest.raises(ValueError, match="^condition_channels must"):
        build_coupling_flow(4, 1, conv_subnet_constructor(8), condition_channels=-1)


def test_positional_encoding_map_is_the_sincos_encoding_of_rows_and_columns() -> None:
    encoding = positional_encoding_map(8, 3, 5)
    assert encoding.shape == (1, 8, 3, 5)
    assert not encoding.requires_grad
    # the first half depends on the column only, the second half on the row only
    assert torch.equal(encoding[:, :4], encoding[:, :4, :1].expand(-1, -1, 3, -1))
    assert torch.equal(encoding[:, 4:], encoding[:, 4:, :, :1].expand(-1, -1, -1, 5))
    # frequency 1 of the column: sin(col) and cos(col)
    columns = torch.arange(5, dtype=torch.float32)
    assert torch.allclose(encoding[0, 0, 0], torch.sin(columns), atol=1e-6)
    assert torch.allclose(encoding[0, 2, 0], torch.cos(columns), atol=1e-6)
    # every position gets its own code
    codes = encoding[0].flatten(1).T
    assert torch.cdist(codes, codes).add(torch.eye(15)).min() > 1e-3
    with pytest.raises(ValueError, match="multiple of 4"):
        positional_encoding_map(6, 3, 5)


def test_nll_sums_run_in_at_least_float32():
    z = torch.randn(2, 300, 4, 4)
    log_jac_map = torch.randn(2, 1, 4, 4)
    half = position_nll(z.bfloat16(), log_jac_map.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, position_nll(z.bfloat16().float(), log_jac_map.bfloat16().float()))
    assert flow_nll(z.bfloat16(), torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert full_precision(z.double()).dtype == torch.float64
    assert full_precision(z.half()).dtype == torch.float32
