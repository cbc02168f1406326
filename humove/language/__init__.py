"""Language models for the `keywords` stage: the taxonomy, the paper's keyword prompt, output parsing, and the
chat backends (vLLM offline batches, an OpenAI-compatible endpoint, transformers) behind one interface."""
