"""Samplers: logits.py (sampling rules), autoregressive.py (prefill + lax.scan, KV cache), ..."""
