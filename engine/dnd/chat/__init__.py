"""Calling OpenAI-compatible chat endpoints, shared by every backend that does (the summarizer of
Step 2B, the vision captioner of Step 2A): keys and the retry policy (``compat``), the caller that
runs every request as a coroutine on one loop (``caller``, ``loop``), and the adaptive window of
requests in flight with its per-minute budgets (``aimd``, ``budget``, ``gate``, ``limits``)."""
