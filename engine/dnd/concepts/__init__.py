"""Step 2B: candidate concepts from captions (LLM or offline extractive summarizer)."""
