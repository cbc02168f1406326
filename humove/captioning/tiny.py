"""Tiny random-weight Qwen2-VL / Qwen2.5-VL models with a processor built in code (no files, no downloads), for
tests and the CPU caption bench. They exercise the real transformers code path (processor, video tokens, batched
`generate`) and produce meaningless text: never a captioner for data."""

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


def tiny_processor():
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    budget = {"min_pixels": 28 * 28, "max_pixels": 64 * 28 * 28}
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**budget), tokenizer=tiny_tokenizer(),
                            video_processor=Qwen2VLVideoProcessor(**budget), chat_template=CHAT_TEMPLATE)


def tiny_vl_model(processor, qwen25: bool = False):
    """A random-weight Qwen2-VL (or Qwen2.5-VL) with a 32-wide text model and a one-block vision tower."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    tok = processor.tokenizer
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}, "eos_token_id": tok.eos_token_id,
            "bos_token_id": None, "pad_token_id": tok.pad_token_id}
    vision = {"depth": 1, "hidden_size": 32, "num_heads": 4, "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2, "in_chans": 3}
    torch.manual_seed(0)
    if qwen25:
        config = Qwen2_5_VLConfig(text_config=text, vision_config={**vision, "intermediate_size": 64,
                                                                    "out_hidden_size": 32, "fullatt_block_indexes": [0],
                                                                    "window_size": 56}, **ids)
        return Qwen2_5_VLForConditionalGeneration(config).eval()
    config = Qwen2VLConfig(text_config=text, vision_config={**vision, "embed_dim": 32, "mlp_ratio": 2}, **ids)
    return Qwen2VLForConditionalGeneration(config).eval()
