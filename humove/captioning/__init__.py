"""Clip captioning: the caption prompt and its structured (JSON) answer, frame sampling for video input, and the
backends (vLLM and transformers Qwen2.5-VL / Qwen2-VL on GPU; an offline template that says it is one)."""
