"""Tiny random-weight Qwen2-VL / Qwen2.5-VL models with their own processor classes built in code (no downloads),
for tests, the CPU caption bench and the GPU check. They exercise the real code path (processor, video tokens and
their time axis, batched `generate`) and produce meaningless text: never a captioner for data."""

from __future__ import annotations

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A character-level fast tokenizer with Qwen2-VL's special tokens and a chat template (no files)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;'\"{}[]()-_/!?&*#\n"))
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *chars, "[UNK]"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="[UNK]", additional_special_tokens=SPECIAL_TOKENS[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_processor(qwen25: bool = False):
    """Qwen2-VL's processor, or with `qwen25` Qwen2.5-VL's (`Qwen2_5_VLProcessor`, which adds the video time axis
    `second_per_grid_ts`); both share Qwen2-VL's image and video processors, as the released models do."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    budget = {"min_pixels": 28 * 28, "max_pixels": 64 * 28 * 28}
    processor_class = Qwen2_5_VLProcessor if qwen25 else Qwen2VLProcessor
    return processor_class(image_processor=Qwen2VLImageProcessor(**budget), tokenizer=tiny_tokenizer(),
                           video_processor=Qwen2VLVideoProcessor(**budget), chat_template=CHAT_TEMPLATE)


def tiny_vl_model(processor, qwen25: bool | None = None, hidden_size: int = 32, heads: int = 4):
    """A random-weight Qwen2-VL or Qwen2.5-VL (by default the one that matches `processor`) with a `hidden_size`-wide
    two-layer text model and a one-block vision tower. Qwen2.5-VL gets the released models' 2 tokens per second."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    if qwen25 is None:
        qwen25 = type(processor).__name__ == "Qwen2_5_VLProcessor"
    eighth = hidden_size // heads // 8  # mrope spreads half the head dim over (t, h, w)
    text = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_hidden_layers": 2,
            "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2), "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": [eighth, eighth, 2 * eighth]}}
    vision = {"depth": 1, "hidden_size": hidden_size, "num_heads": heads}
    torch.manual_seed(0)
    if qwen25:
        vision.update(intermediate_size=2 * hidden_size, out_hidden_size=hidden_size, fullatt_block_indexes=[0],
                      window_size=56, tokens_per_second=2)
        return Qwen2_5_VLForConditionalGeneration(vl_config(processor, True, text, vision)).eval()
    vision.update(embed_dim=hidden_size, mlp_ratio=2)
    return Qwen2VLForConditionalGeneration(vl_config(processor, False, text, vision)).eval()


# Qwen2.5-VL-7B-Instruct's shapes (its config.json), for a random-weight model of the released size.
QWEN25_VL_7B_TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                     "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
                     "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                     "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}
QWEN25_VL_7B_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": 3584, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                       "tokens_per_second": 2, "hidden_act": "silu"}


def vl_config(processor, qwen25: bool, text: dict, vision: dict):
    """A Qwen2-VL / Qwen2.5-VL config with the given text and vision shapes whose vocabulary and special token ids
    are the processor's tokenizer's (so every id the model can emit decodes)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    tok = processor.tokenizer
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text = {**text, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "bos_token_id": None,
            "pad_token_id": tok.pad_token_id}
    vision = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, **vision}
    return (Qwen2_5_VLConfig if qwen25 else Qwen2VLConfig)(text_config=text, vision_config=vision, **ids)


def save_vl_model(folder: str, size: str = "tiny") -> str:
    """Write a random-weight Qwen2.5-VL with its processor (tokenizer, processor and chat template) to `folder`,
    loadable offline by `AutoProcessor` / `AutoModelForImageTextToText` and so by the caption backends.

    `size="tiny"`: 32 wide, with its weights. `size="7b"`: Qwen2.5-VL-7B's shapes but the tiny tokenizer's
    vocabulary, the config alone (no weights): for vLLM's `load_format="dummy"`, which draws random weights itself."""
    processor = tiny_processor(qwen25=True)
    if size == "tiny":
        tiny_vl_model(processor).save_pretrained(folder)
    elif size == "7b":
        vl_config(processor, True, QWEN25_VL_7B_TEXT, QWEN25_VL_7B_VISION).save_pretrained(folder)
    else:
        raise ValueError(f"unknown model size {size!r}: use tiny or 7b")
    processor.save_pretrained(folder)
    return folder
