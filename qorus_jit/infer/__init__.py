"""Inference: generation from a KV cache, sentence embeddings and the model sources `qorus generate` reads."""
