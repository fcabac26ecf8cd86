"""Whose run lives at an output URI: resume the same config, refuse a different one.

``_RUN`` (JSON) is written when a run starts, before any model work; ``_SUCCESS`` when it ends.
Both carry the digest of the config parts that decide the results. Starting a run at a URI that
holds a run of the same digest — finished or not — resumes it: checkpoints and caches answer what
was done. A different digest is refused unless the user asks to overwrite, because mixing two
configs' images and checkpoints under one prefix would give a table no config produced.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from dnd.errors import ConfigError
from dnd.store.cache import content_key

if TYPE_CHECKING:
    from dnd.config import RunConfig
    from dnd.store.layout import RunLayout

RUN_FILE = "_RUN"
#: Under the run prefix, what belongs to one run (the cache is content-addressed and is kept).
RUN_PARTS = ("neurons", "images", "checkpoints", "_SUCCESS", RUN_FILE)
#: Sections that change where and how fast a run goes, not what it finds.
NOT_RESULTS = ("ray", "output")


def config_digest(config: RunConfig) -> str:
    data = config.model_dump(mode="json", exclude=set(NOT_RESULTS))
    data["output.image_format"] = config.output.image_format
    return content_key("run", json.dumps(data, sort_keys=True, default=str))


def claim(layout: RunLayout, config: RunConfig, overwrite: bool, log: Any) -> dict[str, Any]:
    """Decide fresh / resume / overwrite for ``layout`` and record this run in ``_RUN``.

    Returns ``{"mode": ..., "previous": ...}`` for the manifest.
    """
    digest = config_digest(config)
    previous = layout.read_json(RUN_FILE) or layout.read_json("_SUCCESS")
    previous_digest = (previous or {}).get("config_digest")
    has_results = any(layout.fs.exists(layout.path(part)) for part in ("neurons", "images", "checkpoints"))
    mode = "fresh"
    if previous is not None or has_results:
        if previous_digest == digest:
            mode = "resume"
        elif not overwrite:
            what = (f"a run of another config (digest {previous_digest})" if previous_digest
                    else "results this version of dnd cannot attribute to a config")
            raise ConfigError(
                f"output location {layout.uri!r} holds {what}, but this config's digest is {digest}; "
                f"use another --out, or pass --overwrite to replace that run"
            )
        else:
            mode = "overwrite"
            for part in RUN_PARTS:
                layout.remove(part)
    if mode == "resume":
        log(f"resuming the unfinished run at {layout.uri} (same config, digest {digest})"
            if not layout.fs.exists(layout.success) else f"rerunning the finished run at {layout.uri} from its caches")
    # The old _SUCCESS goes before any work: until the new one is written, the run is not complete.
    layout.remove("_SUCCESS")
    layout.write_json({"config_digest": digest, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "mode": mode}, RUN_FILE)
    return {"mode": mode, "config_digest": digest}
