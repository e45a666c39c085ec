"""Omni-ID encoder, MTD and flow decoder: shapes, invariances, masking, losses, timm loading."""

from __future__ import annotations

import pytest
import torch

from training.blocks import patchify, unpatchify
from training.config import BackboneConfig, tiny
from training.flow import DiTFlowDecoder
from training.model import MissingWeightsError, OmniID, OmniIDEncoder, build_backbone
from training.mtd import masked_reconstruction_loss, random_patch_mask

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder() -> OmniIDEncoder:
    torch.manual_seed(0)
    config = tiny()
    return OmniIDEncoder(config.backbone, config.encoder, config.data.image_size).eval()


@pytest.mark.parametrize("n_images", range(1, 9))
def test_encoder_output_shape_for_any_number_of_images(encoder, n_images):
    images = torch.rand(2, n_images, 3, 64, 64)
    with torch.no_grad():
        tokens = encoder(images)
    assert tokens.shape == (2, encoder.num_tokens, encoder.dim)
    assert torch.isfinite(tokens).all()


def test_encoder_is_invariant_to_image_order(encoder):
    images = torch.rand(1, 5, 3, 64, 64)
    with torch.no_grad():
        a = encoder(images)
        b = encoder(images[:, [3, 0, 4, 2, 1]])
        c = encoder(images[:, [0, 1, 2, 3, 3]])  # a different set must give different tokens
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.95, 1.0])
def test_masking_hides_exactly_the_requested_fraction(ratio):
    hidden = random_patch_mask(7, 64, ratio, torch.Generator().manual_seed(1))
    assert hidden.dtype == torch.bool
    assert (hidden.sum(dim=1) == round(ratio * 64)).all()
    if 0 < ratio < 1:  # rows are drawn independently
        assert not (hidden == hidden[0]).all()


def test_patchify_round_trip():
    x = torch.randn(2, 3, 64, 64)
    assert patchify(x, 8).shape == (2, 64, 192)
    torch.testing.assert_close(unpatchify(patchify(x, 8), 8, 3, 64, 64), x)


def test_masked_loss_ignores_pixels_outside_the_face_mask():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 16, 48, generator=g), torch.randn(3, 16, 48, generator=g)
    hidden = random_patch_mask(3, 16, 0.75, g)
    face = (torch.rand(3, 16, 48, generator=g) > 0.5).float()
    for kind in ("l1", "l2"):
        base = masked_reconstruction_loss(pred, target, hidden, face, kind)
        outside = face == 0
        changed = torch.where(outside, target + 100.0, target)
        changed_pred = torch.where(outside, pred - 50.0, pred)
        torch.testing.assert_close(masked_reconstruction_loss(changed_pred, changed, hidden, face,
                                                              kind), base)
        inside = torch.where(~outside, target + 1.0, target)
        assert masked_reconstruction_loss(pred, inside, hidden, face, kind) != base


def test_model_loss_ignores_background_of_hidden_patches():
    """End to end: repaint the background where the decoder cannot see it; loss is unchanged."""
    torch.manual_seed(0)
    model = OmniID(tiny()).eval()
    g = torch.Generator().manual_seed(3)
    inputs = torch.randint(0, 256, (2, 3, 3, 64, 64), generator=g, dtype=torch.uint8)
    targets = torch.randint(0, 256, (2, 4, 3, 64, 64), generator=g, dtype=torch.uint8)
    masks = torch.zeros(2, 4, 1, 64, 64, dtype=torch.uint8)
    masks[..., 16:48, 20:44] = 255
    hidden = random_patch_mask(8, 64, 0.95, g)
    pixel_hidden = unpatchify(hidden[..., None].expand(-1, -1, 64).float(), 8, 1, 64, 64)
    pixel_hidden = pixel_hidden.view(2, 4, 1, 64, 64).bool()
    repaint = pixel_hidden & (masks == 0)
    repainted = torch.where(repaint.expand_as(targets), 255 - targets, targets)

    def loss(t):
        with torch.no_grad():
            ids = model.encoder(inputs.float() / 255).repeat_interleave(4, dim=0)
            flat = t.flatten(0, 1).float() / 127.5 - 1
            return model.mtd.loss(ids, flat, (masks.flatten(0, 1) > 0).float(),
                                  hidden=hidden)["loss"]
    assert repaint.any()
    torch.testing.assert_close(loss(repainted), loss(targets))
    face_changed = torch.where((masks > 0).expand_as(targets), 255 - targets, targets)
    assert loss(face_changed) != loss(targets)


def test_flow_decoder_loss_and_sampler_shapes():
    torch.manual_seed(0)
    config = tiny()
    flow = DiTFlowDecoder(config.flow, config.encoder.dim, 64)
    ids = torch.randn(3, config.encoder.num_tokens, config.encoder.dim)
    targets = torch.rand(3, 3, 64, 64) * 2 - 1
    landmarks = torch.rand(3, 5, 2)
    out = flow.loss(ids, targets, torch.Generator().manual_seed(0), landmarks=landmarks)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert flow.head.weight.grad is not None and flow.head.weight.grad.abs().sum() > 0
    images = flow.sample(ids, landmarks, steps=3, generator=torch.Generator().manual_seed(1))
    assert images.shape == (3, 3, 64, 64) and images.abs().max() <= 1


def test_flow_identity_branch_changes_the_velocity():
    """The decoupled identity attention is wired: different tokens, different prediction."""
    torch.manual_seed(0)
    config = tiny()
    flow = DiTFlowDecoder(config.flow, config.encoder.dim, 64)
    for p in flow.parameters():  # open the adaLN-Zero gates and the zero-init head
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([0.5])
    a = flow.velocity(x, t, torch.randn(1, 16, 64))
    b = flow.velocity(x, t, torch.randn(1, 16, 64))
    assert not torch.allclose(a, b)


def test_timm_backbone_loads_a_real_state_dict_file(tmp_path):
    """The CLIP-H path (timm + local file), exercised with a small timm ViT saved here."""
    timm = pytest.importorskip("timm")
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    weights = tmp_path / "vit_tiny_patch16_224.pth"
    torch.save(source.state_dict(), weights)
    config = BackboneConfig(name="timm", timm_name="vit_tiny_patch16_224", weights=str(weights))
    backbone = build_backbone(config, image_size=64)  # position embeddings resampled 14->4
    torch.testing.assert_close(backbone.model.blocks[0].attn.qkv.weight,
                               source.blocks[0].attn.qkv.weight)
    tokens = backbone(torch.rand(2, 3, 64, 64))
    assert tokens.shape == (2, 16, 192)


def test_missing_backbone_weights_is_one_clear_error(tmp_path):
    pytest.importorskip("timm")
    missing = tmp_path / "vit_huge_patch14_clip_224.pth"
    config = BackboneConfig(name="timm", timm_name="vit_tiny_patch16_224", weights=str(missing))
    with pytest.raises(MissingWeightsError, match="vit_huge_patch14_clip_224.pth"):
        build_backbone(config, image_size=64)


def open_clip_file(path, layers: int) -> dict[str, torch.Tensor]:
    """A stand-in open_clip ViT-H-14 checkpoint (`torch.save`d state dict, as released)."""
    from training.stand_ins import open_clip_vit_layout

    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) * 0.02
             for k, shape in open_clip_vit_layout(layers=layers).items()}
    torch.save(state, path)
    return state


def test_full_open_clip_vit_h_layout_maps_onto_every_timm_weight():
    """All 32 blocks of ViT-H-14, on the meta device: every open_clip `visual.*` tensor lands on
    a timm weight of the same shape and every timm weight is covered."""
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import checkpoint_filter_fn

    from training.stand_ins import open_clip_vit_layout
    with torch.device("meta"):
        model = timm.create_model("vit_huge_patch14_clip_224", pretrained=False, num_classes=0)
        state = {k: torch.empty(shape) for k, shape in open_clip_vit_layout().items()}
    converted = checkpoint_filter_fn(state, model)
    converted = {k: v for k, v in converted.items() if not k.startswith("head.")}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert len(expected) == 7 + 12 * 32   # cls, pos, conv (no bias), 2 norms; 12 per block


def test_timm_backbone_loads_an_open_clip_vit_h_checkpoint(tmp_path):
    """The CLIP-H loading path on an open_clip-layout file; 2 of ViT-H's 32 blocks keep CI small,
    every key name and per-layer shape is the full model's (the test above checks all 32)."""
    pytest.importorskip("timm")
    path = tmp_path / "open_clip_pytorch_model.bin"
    state = open_clip_file(path, layers=2)
    config = BackboneConfig(name="timm", timm_name="vit_huge_patch14_clip_224", weights=str(path),
                            timm_depth=2)
    backbone = build_backbone(config, image_size=224)
    model = backbone.model
    assert len(model.blocks) == 2 and model.embed_dim == 1280
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight,
                               state["visual.transformer.resblocks.1.attn.in_proj_weight"])
    torch.testing.assert_close(model.blocks[0].mlp.fc2.weight,
                               state["visual.transformer.resblocks.0.mlp.c_proj.weight"])
    torch.testing.assert_close(model.patch_embed.proj.weight, state["visual.conv1.weight"])
    torch.testing.assert_close(model.cls_token[0, 0], state["visual.class_embedding"])
    torch.testing.assert_close(model.pos_embed[0], state["visual.positional_embedding"])
    torch.testing.assert_close(model.norm.weight, state["visual.ln_post.weight"])
    with torch.no_grad():
        tokens = backbone(torch.rand(1, 3, 224, 224))
    assert tokens.shape == (1, 256, 1280)   # 16 x 16 patches of 14 px, class token dropped


def test_timm_backbone_loads_a_safetensors_file(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    config = BackboneConfig(name="timm", timm_name="vit_tiny_patch16_224", weights=str(path))
    backbone = build_backbone(config, image_size=224)
    torch.testing.assert_close(backbone.model.blocks[2].mlp.fc1.weight,
                               source.blocks[2].mlp.fc1.weight)
