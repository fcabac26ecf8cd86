"""The static HTML report of a run (`dnd report`).

``dnd.report(uri, out)`` is the Python API. Importing this subpackage binds ``dnd.report`` to the
package itself (Python sets a submodule as its parent's attribute), so the package is made
callable with the same signature: ``dnd.report(...)`` works before and after that import.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableReportPackage(types.ModuleType):
    def __call__(self, uri: str, out: str | None = None, **options: Any) -> str:
        from dnd.report.build import build_report

        return build_report(uri, out, **options)


sys.modules[__name__].__class__ = _CallableReportPackage
