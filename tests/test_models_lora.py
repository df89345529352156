"""LoRAInstructModule and its model: targets, gradient checkpointing, pad resizing."""

import dataclasses

import pytest
import torch

from caslie.config import ModelConfig
from caslie.errors import ConfigError
from caslie.models.lora import build_lora_model, compile_layers, load_base_model
from caslie.pretrained import load_tokenizer
from caslie.tiny import ensure_tiny

TINY = ModelConfig(name_or_path="tiny:mistral")


def test_missing_lora_targets_list_the_available_linear_layers(tokenizer):
    cfg = dataclasses.replace(TINY, lora_target_modules=["q_proj", "query_key_value"])
    with pytest.raises(ConfigError, match=r"\['query_key_value'\].*available: .*down_proj.*q_proj"):
        build_lora_model(cfg, tokenizer)


def test_paper_defaults_put_adapters_on_every_projection_and_the_lm_head(tokenizer):
    model = build_lora_model(TINY, tokenizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for target in TINY.lora_target_modules:
        assert any(f".{target}.lora_A" in n for n in trainable), target
    assert model.peft_config["default"].r == 16 and model.peft_config["default"].lora_alpha == 16


def test_gradient_checkpointing_still_trains_the_adapters(tokenizer):
    model = build_lora_model(dataclasses.replace(TINY, gradient_checkpointing=True), tokenizer)
    model.train()
    assert model.base_model.model.is_activation_checkpointing
    ids = torch.tensor([tokenizer("a cordless drill with two batteries")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # lora_B starts at zero, so lora_A gets no gradient on the first step; lora_B must.
    grads = [p.grad for n, p in lora.items() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_tokenizer_without_pad_gets_a_distinct_one_and_the_model_grows_to_fit(tmp_path):
    folder = ensure_tiny("llama")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # no reserved pad: the last resort
        path = tmp_path / "nopad" / name
        path.write_text(path.read_text().replace("<|finetune_right_pad_id|>", "<|reserved_9|>"))
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        if (folder / f).exists():
            (tmp_path / "nopad" / f).write_bytes((folder / f).read_bytes())
    loaded = load_tokenizer(str(tmp_path / "nopad"))
    assert loaded.pad_token == "<|pad|>" and loaded.pad_token_id != loaded.eos_token_id
    cfg = ModelConfig(name_or_path=str(tmp_path / "nopad"))
    a, b = load_base_model(cfg, loaded), load_base_model(cfg, loaded)
    assert a.get_input_embeddings().weight.shape[0] == len(loaded)
    assert a.config.pad_token_id == loaded.pad_token_id
    # The added row is deterministic, so an adapter-only checkpoint reloads onto the same weights.
    assert torch.equal(a.get_input_embeddings().weight, b.get_input_embeddings().weight)
    assert torch.equal(a.get_output_embeddings().weight, b.get_output_embeddings().weight)


def test_attention_is_sdpa_unless_configured(tokenizer):
    assert build_lora_model(TINY, tokenizer).config._attn_implementation == "sdpa"
    eager = build_lora_model(dataclasses.replace(TINY, attn_implementation="eager"), tokenizer)
    assert eager.config._attn_implementation == "eager"


def test_liger_is_refused_without_a_cuda_gpu(tokenizer):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here (tests/gpu covers Liger)")
    with pytest.raises(ConfigError, match="model.liger needs a CUDA GPU"):
        build_lora_model(dataclasses.replace(TINY, liger=True), tokenizer)


@pytest.mark.slow
def test_compiled_layers_give_the_eager_loss_and_gradients(tokenizer):
    eager = build_lora_model(TINY, tokenizer)
    compiled = build_lora_model(TINY, tokenizer)
    compiled.load_state_dict(eager.state_dict())  # the same adapter initialisation
    assert compile_layers(compiled.get_base_model()) == 2  # the tiny model's decoder layers
    ids = torch.tensor([tokenizer("a cordless drill with two batteries")["input_ids"]] * 2)
    losses, grads = [], []
    for model in (eager, compiled):
        model.eval()  # no dropout: the same computation both ways
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6), name
    # Names are unchanged, so adapter checkpoints load either way.
    assert eager.state_dict().keys() == compiled.state_dict().keys()


class _SyncCounter:
    """Counts reads of a tensor's value to the host (``item``, ``bool``, ``int``, ``float``) made by
    the training code (the module, its callbacks, Lightning's loops), batch by batch."""

    WATCHED = ("caslie/models/", "callbacks/", "lightning/pytorch/")
    READS = ("item", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.per_batch: list[int] = []
        self.count = 0
        for name in self.READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        import sys

        def read(tensor, *args):
            frame = sys._getframe(1)
            for _ in range(6):  # who asked: the caller or a few frames above it
                if frame is None:
                    break
                if any(w in frame.f_code.co_filename for w in self.WATCHED):
                    self.count += 1
                    break
                frame = frame.f_back
            return original(tensor, *args)

        return read


@pytest.mark.slow
def test_training_reads_device_values_only_at_log_steps(tmp_path, monkeypatch):
    """What stalls a GPU is the host waiting on a device value; on a CPU the reads are counted."""
    import lightning as L
    from conftest import demo_config

    from train import run

    counter = _SyncCounter(monkeypatch)
    steps: list[tuple[int, int]] = []

    class PerBatch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            counter.count = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.append((trainer.global_step, counter.count))

    cfg = demo_config(tmp_path, "data.tasks=sa", "logger.wandb.mode=disabled", "trainer.max_epochs=2",
                      "trainer.log_every_n_steps=3", "data.eval_splits=[val]",
                      "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
                      "eval.generate_on_val=false", "eval.select=loss",
                      "optim.effective_batch_size=8", "optim.micro_batch_size=4")  # fmt: skip
    run(cfg, callbacks=[PerBatch()])
    quiet = [n for step, n in steps if step % 3]  # batches that end away from a logged step
    logged = [n for step, n in steps if step % 3 == 0]
    assert len(quiet) >= 4 and set(quiet) == {0}, steps
    assert max(logged) > 0  # the logged steps do read (the counter sees reads)
