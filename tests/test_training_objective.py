"""The multi-decoder objective: which losses a step computes and which of them train the encoder."""

from __future__ import annotations

import pytest
import torch

from training.config import Stage, tiny
from training.model import OmniID, phase_at

torch.set_num_threads(1)


def joint_config(**objective):
    config = tiny()
    config.stage = Stage.JOINT
    config.data.image_size = 32
    for key, value in objective.items():
        setattr(config.objective, key, value)
    return config


def batch(seed: int = 0, n_tgt: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, 256, (2, 3, 3, 32, 32), generator=g, dtype=torch.uint8)
    targets = torch.randint(0, 256, (2, n_tgt, 3, 32, 32), generator=g, dtype=torch.uint8)
    masks = torch.full((2, n_tgt, 1, 32, 32), 255, dtype=torch.uint8)
    landmarks = torch.rand(2, n_tgt, 5, 2, generator=g)
    return inputs, targets, masks, landmarks


def encoder_grads(model: OmniID, phase, seed: int = 0) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same masks and noise for every phase compared
    out = model(*batch(), phase=phase)
    out["loss"].backward()
    return {n: (p.grad.clone() if p.grad is not None else None)
            for n, p in model.encoder.named_parameters()}


def open_flow_gates(model: OmniID) -> None:
    """The DiT's adaLN-Zero gates and head start at zero (no gradient into the identity path
    until a few steps have trained them); open them so one backward shows the wiring."""
    for p in model.flow.parameters():
        torch.nn.init.normal_(p, std=0.05)


def test_joint_step_trains_encoder_with_both_losses():
    torch.manual_seed(0)
    config = joint_config(mtd_weight=1.0, flow_weight=0.5)
    model = OmniID(config)
    open_flow_gates(model)
    joint = phase_at(config, 0)
    assert (joint.name, joint.mtd_weight, joint.flow_weight) == ("joint", 1.0, 0.5)
    torch.manual_seed(1)
    out = model(*batch(), phase=joint)
    assert set(out) == {"loss", "mtd", "flow"}
    torch.testing.assert_close(out["loss"], out["mtd"] + 0.5 * out["flow"])

    both = encoder_grads(model, joint)
    # both decoders receive gradients
    assert model.mtd.head.weight.grad.abs().sum() > 0 and model.flow.head.weight.grad.abs().sum() > 0
    mtd_only = encoder_grads(model, phase_at(joint_config(flow_weight=0.0), 0))
    name = "queries"
    assert both[name] is not None and both[name].abs().sum() > 0
    # the flow loss's gradient reaches the encoder too: the joint gradient is not the MTD's
    assert not torch.allclose(both[name], mtd_only[name])


def test_mtd_warm_up_then_joint_schedule():
    config = joint_config(mtd_warmup_steps=3, decoder_warmup_steps=2)
    names = [phase_at(config, step).name for step in range(7)]
    assert names == ["mtd_warmup"] * 3 + ["decoder_warmup"] * 2 + ["joint"] * 2
    warm = phase_at(config, 0)
    assert warm.flow_weight == 0 and warm.encoder_from_mtd
    decoder_warm = phase_at(config, 3)
    assert decoder_warm.flow_weight > 0 and not decoder_warm.encoder_from_flow
    assert decoder_warm.encoder_from_mtd
    # the two-stage recipe: stage mtd, then stage flow (from --init)
    config.stage = Stage.MTD
    assert {phase_at(config, s).flow_weight for s in range(7)} == {0.0}
    config.stage = Stage.FLOW
    assert phase_at(config, 0).mtd_weight == 0 and phase_at(config, 9).encoder_from_flow


def test_warm_up_phase_computes_no_flow_loss():
    torch.manual_seed(0)
    config = joint_config(mtd_warmup_steps=5)
    model = OmniID(config)
    out = model(*batch(), phase=phase_at(config, 0))
    assert set(out) == {"loss", "mtd"}
    out["loss"].backward()
    assert all(p.grad is None for p in model.flow.parameters())


def test_decoder_warm_up_keeps_the_flow_gradient_out_of_the_encoder():
    torch.manual_seed(0)
    config = joint_config(decoder_warmup_steps=5, mtd_weight=0.0)
    config.stage = Stage.FLOW
    model = OmniID(config)
    open_flow_gates(model)
    phase = phase_at(config, 0)
    assert phase.name == "decoder_warmup" and not phase.trains_encoder
    grads = encoder_grads(model, phase)
    assert all(g is None for g in grads.values())
    assert model.flow.head.weight.grad.abs().sum() > 0
    trained = encoder_grads(model, phase_at(config, 5))
    assert trained["queries"] is not None and trained["queries"].abs().sum() > 0


def test_freeze_encoder_trains_the_decoders_only():
    torch.manual_seed(0)
    config = joint_config(freeze_encoder=True)
    model = OmniID(config)
    open_flow_gates(model)
    for step in (0, 100):
        assert all(g is None for g in encoder_grads(model, phase_at(config, step)).values())
    assert model.mtd.head.weight.grad is not None


def test_a_phase_without_any_loss_is_an_error():
    config = joint_config(mtd_weight=0.0, flow_weight=0.0)
    model = OmniID(config)
    with pytest.raises(ValueError, match="--mtd-weight"):
        model(*batch(), phase=phase_at(config, 0))
