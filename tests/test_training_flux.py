"""The FLUX + IP-Adapter decoder on the real diffusers / transformers classes at a tiny random
configuration written by the test (`training.stand_ins`): prompt embeddings, forward, loss, where the
gradient goes, checkpoints and the sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training import checkpoint as ckpt
from training.config import FlowDecoderKind, Stage, tiny
from training.flux import MissingFluxWeightsError
from training.model import OmniID, phase_at
from training.optim import build_optimizer
from training.prompt_embeds import main as prompt_main
from training.stand_ins import POOLED_WIDTH, TEXT_WIDTH, write_tiny_flux

torch.set_num_threads(1)
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    root = write_tiny_flux(tmp_path_factory.mktemp("flux"))
    assert prompt_main(["--flux", str(root), "--out", str(root / "prompt.safetensors"),
                        "--max-length", "16"]) == 0
    return root


def flux_config(flux_dir: Path, stage: Stage = Stage.FLOW):
    config = tiny()
    config.stage = stage
    config.data.image_size = 32
    config.flow.decoder = FlowDecoderKind.FLUX
    config.flow.flux_path = str(flux_dir)
    config.flow.prompt_embeds = str(flux_dir / "prompt.safetensors")
    return config


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (2, 3, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (2, 2, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.full((2, 2, 1, 32, 32), 255, dtype=torch.uint8),
            torch.rand(2, 2, 5, 2, generator=g))


def test_prompt_embeds_command_runs_the_real_text_encoders(flux_dir, tmp_path):
    from safetensors import safe_open

    with safe_open(str(flux_dir / "prompt.safetensors"), "pt") as f:
        assert f.metadata()["prompt"] == "photo of a person."
        embeds, pooled = f.get_tensor("prompt_embeds"), f.get_tensor("pooled_prompt_embeds")
    assert embeds.shape == (1, 16, TEXT_WIDTH) and pooled.shape == (1, POOLED_WIDTH)
    assert torch.isfinite(embeds).all() and embeds.std() > 0
    other = tmp_path / "other.safetensors"
    assert prompt_main(["--flux", str(flux_dir), "--out", str(other), "--max-length", "16",
                        "--prompt", "a person"]) == 0
    with safe_open(str(other), "pt") as f:
        assert not torch.allclose(f.get_tensor("prompt_embeds"), embeds)


def test_flux_decoder_trains_only_the_identity_branches_and_the_encoder(flux_dir):
    torch.manual_seed(0)
    config = flux_config(flux_dir)
    model = OmniID(config)
    trainable = {n for n, p in model.flow.named_parameters() if p.requires_grad}
    assert trainable and all(".processor.to_k_ip." in n or ".processor.to_v_ip." in n
                             or "x_embedder.pose." in n for n in trainable)
    assert len(model.flow.transformer.transformer_blocks) == 1
    optimizer = build_optimizer(model, config.optim)
    phase = phase_at(config, 0)
    for _ in range(2):  # the identity branch starts closed (to_v_ip = 0): one step opens it
        optimizer.zero_grad(set_to_none=True)
        out = model(*batch(), phase=phase)
        assert set(out) == {"loss", "flow"} and torch.isfinite(out["loss"])
        out["loss"].backward()
        optimizer.step()
    for name, p in model.flow.named_parameters():
        if name in trainable:
            assert p.grad is not None, name
        else:
            assert p.grad is None, f"frozen FLUX weight {name} got a gradient"
    v_ip = next(p for n, p in model.flow.named_parameters() if ".to_v_ip.0.weight" in n)
    assert v_ip.grad.abs().sum() > 0
    assert model.encoder.queries.grad is not None and model.encoder.queries.grad.abs().sum() > 0


def test_flux_checkpoint_round_trip_leaves_out_the_frozen_base(flux_dir, tmp_path):
    torch.manual_seed(0)
    config = flux_config(flux_dir, Stage.JOINT)
    model = OmniID(config)
    for p in model.flow.parameters():  # trained-looking adapter weights
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    state = model.checkpoint_state()
    assert not any(k in state for k in model.frozen_keys())
    assert any(".to_v_ip." in k for k in state) and "flow.prompt_embeds" in state
    assert "flow.transformer.transformer_blocks.0.attn.to_q.weight" not in state
    path = tmp_path / "model.pt"
    ckpt.atomic_save({"format": ckpt.CHECKPOINT_FORMAT, "model": state}, path)
    assert path.stat().st_size < 4 * sum(v.numel() for v in state.values()) + 200_000

    torch.manual_seed(1)
    again = OmniID(config)
    again.load_checkpoint_state(ckpt.load(path)["model"])
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([0.3, 0.8])
    ids, landmarks = torch.randn(2, 16, 64), torch.rand(2, 5, 2)
    torch.testing.assert_close(again.flow.velocity(x, t, ids, landmarks),
                               model.flow.velocity(x, t, ids, landmarks))
    with pytest.raises(ValueError, match="missing"):
        again.load_checkpoint_state({k: v for k, v in state.items() if ".to_v_ip." not in k})


def test_flux_sampler_generates_images_from_noise_in_the_targets_pose(flux_dir):
    torch.manual_seed(0)
    model = OmniID(flux_config(flux_dir))
    for p in model.flow.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    ids, landmarks = torch.randn(2, 16, 64), torch.rand(2, 5, 2)
    images = model.flow.sample(ids, landmarks, steps=2, generator=torch.Generator().manual_seed(3))
    again = model.flow.sample(ids, landmarks, steps=2, generator=torch.Generator().manual_seed(3))
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1
    torch.testing.assert_close(images, again)
    moved = model.flow.sample(ids, landmarks.flip(1), steps=2,
                              generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(moved, images)  # the pose maps reach the generation


def test_missing_flux_folder_is_one_clear_error(tmp_path, flux_dir):
    config = flux_config(tmp_path / "FLUX.1-dev")
    with pytest.raises(MissingFluxWeightsError, match="FLUX.1-dev"):
        OmniID(config)
    config = flux_config(flux_dir)
    config.flow.prompt_embeds = str(tmp_path / "none.safetensors")
    with pytest.raises(MissingFluxWeightsError, match="training.prompt_embeds"):
        OmniID(config)


def _memory_estimate_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "memory_estimate.py"
    spec = importlib.util.spec_from_file_location("memory_estimate_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_memory_estimate_of_a_joint_flux_step_counts_frozen_weights_without_their_gradients():
    # bench/memory_estimate.py once crashed here: MemTracker hooked the frozen FLUX parameters.
    # One batch size only: a step under fake tensors and MemTracker takes ~20 s even this small.
    from training.config import WeightDtype
    from training.stand_ins import TINY_FLUX

    estimate = _memory_estimate_module().estimate
    config = flux_config(Path("unused"), Stage.JOINT)
    config.backbone.weights, config.flow.flux_dtype = "", WeightDtype.BFLOAT16
    row = estimate(config, 1, TINY_FLUX)
    assert row["frozen_M"] > 0 and row["trainable_M"] > 0
    # trainable weights in float32, the frozen FLUX base in bfloat16: all of them are counted
    expected = (row["trainable_M"] * 4 + row["frozen_M"] * 2) * 1e6 / 2**30
    assert row["Parameter"] == pytest.approx(expected, rel=1e-6)
    # the columns split memory at the moment of the peak, when only some gradients exist (none
    # if the peak ends the forward pass), and the frozen base never has any
    assert 0 <= row["Gradient"] <= row["trainable_M"] * 1e6 * 4 / 2**30
    assert row["Activation"] > 0 and row["Optstate"] > 0
    assert row["Total"] >= row["Parameter"] + row["Optstate"] + row["Activation"]


def test_ddp_wraps_only_what_trains_and_gives_the_same_loss(flux_dir):
    """The frozen FLUX base is neither broadcast at start nor in DDP's gradient buckets (a
    one-process gloo group: the real DistributedDataParallel), and the wrapped model's loss
    and gradients are the unwrapped model's."""
    import socket

    from training.train import wrap_trainable

    torch.manual_seed(0)
    config = flux_config(flux_dir, Stage.JOINT)
    model = OmniID(config)
    reference = OmniID(config)
    reference.load_state_dict(model.state_dict())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=0, world_size=1)
    try:
        wrapped = wrap_trainable(model, torch.device("cpu"), config)
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen and frozen <= set(wrapped.parameters_to_ignore)
        bucketed = {id(p) for p in wrapped._module_parameters}
        assert bucketed == {id(p) for p in model.parameters() if p.requires_grad}
        phase = phase_at(config, 10**6)
        torch.manual_seed(1)
        loss = wrapped(*batch(), phase=phase)["loss"]
        loss.backward()
    finally:
        torch.distributed.destroy_process_group()
    torch.manual_seed(1)
    expected = reference(*batch(), phase=phase)["loss"]
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if p.requires_grad and q.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name


def test_a_single_file_flux_checkpoint_loads_through_from_single_file(flux_dir, tmp_path):
    """The transformer as one .safetensors file (diffusers' `from_single_file`, with the tiny
    configs as --flux-config) and the VAE as one file too give the folder's weights."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from safetensors.torch import save_file

    from training.flux import FluxLayoutError, load_flux_modules

    folder_transformer = FluxTransformer2DModel.from_pretrained(flux_dir, subfolder="transformer")
    folder_vae = AutoencoderKL.from_pretrained(flux_dir, subfolder="vae")
    save_file(folder_transformer.state_dict(), str(tmp_path / "flux1-tiny.safetensors"))
    save_file(folder_vae.state_dict(), str(tmp_path / "ae-tiny.safetensors"))
    config = flux_config(flux_dir).flow
    config.flux_path = str(tmp_path / "flux1-tiny.safetensors")
    config.flux_vae = str(tmp_path / "ae-tiny.safetensors")
    config.flux_config = str(flux_dir)      # transformer/config.json, vae/config.json
    transformer, vae, prompt = load_flux_modules(config)
    for got, expected in ((transformer, folder_transformer), (vae, folder_vae)):
        want = expected.state_dict()
        assert got.state_dict().keys() == want.keys()
        assert all(torch.equal(v, want[k]) for k, v in got.state_dict().items())
    assert prompt["prompt_embeds"].shape[-1] == TEXT_WIDTH

    save_file({"unet.conv_in.weight": torch.zeros(4, 4)}, str(tmp_path / "other.safetensors"))
    config.flux_path = str(tmp_path / "other.safetensors")
    with pytest.raises(FluxLayoutError, match="diffusers layout"):
        load_flux_modules(config)


def test_flux_dev_configs_for_single_files_are_flux1_dev_s():
    import json

    from training.flux import flux_dev_config_dir
    root = flux_dev_config_dir()
    transformer = json.loads((root / "transformer" / "config.json").read_text())
    vae = json.loads((root / "vae" / "config.json").read_text())
    assert (transformer["num_layers"], transformer["num_single_layers"],
            transformer["num_attention_heads"], transformer["joint_attention_dim"]) == (
        19, 38, 24, 4096)
    assert vae["latent_channels"] == 16 and vae["scaling_factor"] == 0.3611


def test_the_memory_estimate_names_the_largest_batch_that_fits_a_card():
    bench = _memory_estimate_module()
    points = [(1, 43.5), (8, 99.5)]            # the joint step's totals in the README
    assert bench.largest_batch(points, 80)[0] == 4      # 74.5 GiB / 1.1 = 67.7 -> 35.5 + 8 x 4
    assert bench.largest_batch(points, 141)[0] == 10
    assert bench.largest_batch(points, 40)[0] == 0      # not even one identity
    with pytest.raises(ValueError, match="two or more"):
        bench.largest_batch([(8, 99.5)], 80)
