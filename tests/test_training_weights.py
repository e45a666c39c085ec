"""Backbone weights in the layouts people download: Hugging Face transformers' CLIP vision
model (`vision_model.*` keys) mapped onto our timm CLIP ViT, on a tiny random model saved by
transformers itself and on the real ViT-H/14 key list (meta tensors); anything else is one
error naming the expected layouts."""

from __future__ import annotations

import pytest
import torch

from training.config import BackboneConfig, BackboneName
from training.model import TimmViT, WeightLayoutError, hf_clip_vision_to_timm

torch.set_num_threads(1)
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


def tiny_hf_clip(folder):
    """A random 1-block CLIP vision tower of vit_base_patch32_clip's widths, saved by
    transformers (model.safetensors + config.json)."""
    config = transformers.CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=1,
        patch_size=32, image_size=64, hidden_act="gelu", layer_norm_eps=1e-5)
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(config).eval()
    model.save_pretrained(folder)
    return model


def backbone_config(weights) -> BackboneConfig:
    return BackboneConfig(name=BackboneName.TIMM, timm_name="vit_base_patch32_clip_224",
                          timm_depth=1, weights=str(weights))


def test_a_transformers_clip_vision_model_loads_into_the_backbone_with_the_same_output(tmp_path):
    hf = tiny_hf_clip(tmp_path / "clip")
    assert (tmp_path / "clip" / "model.safetensors").is_file()
    for weights in (tmp_path / "clip" / "model.safetensors", tmp_path / "clip"):  # file, folder
        ours = TimmViT(backbone_config(weights), image_size=64).eval()
        images = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            expected = getattr(hf, "vision_model", hf).post_layernorm(
                hf(pixel_values=images).last_hidden_state)
            got = ours.model.forward_features(images)
        assert got.shape == expected.shape == (2, 5, 768)
        assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_the_real_vit_h14_transformers_keys_map_onto_timm_vit_huge_exactly():
    config = transformers.CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
        patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu")
    with torch.device("meta"):
        hf = transformers.CLIPVisionModelWithProjection(config)
        target = timm.create_model("vit_huge_patch14_clip_224", pretrained=False, num_classes=0)
    # a full CLIPModel file also has the text tower and projections: all dropped
    state = {**hf.state_dict(), "text_model.embeddings.token_embedding.weight":
             torch.empty(49408, 1024, device="meta"), "logit_scale": torch.empty((), device="meta")}
    mapped = hf_clip_vision_to_timm(state)
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected
    assert len(expected) == 3 + 2 + 2 + 32 * 12   # tokens, patches, 2 norms, 32 blocks


def test_weights_in_no_known_layout_are_one_error_naming_the_layouts(tmp_path):
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(4, 4)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightLayoutError) as error:
        TimmViT(backbone_config(tmp_path / "other.safetensors"), image_size=64)
    message = str(error.value)
    assert "vision_model." in message and "open_clip" in message and "timm" in message
