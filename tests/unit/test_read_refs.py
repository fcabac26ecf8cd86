"""Pass B re-reads its top-K probe images by reference: every reference that cannot be read comes
back with the reason, which Step 1 counts and names in ``_SUCCESS``."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from dnd.probe.sources import parquet_ref, read_refs


def test_each_reference_gets_its_bytes_or_its_reason(tmp_path):
    good = tmp_path / "a.png"
    good.write_bytes(b"\x89PNG fake bytes")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    table = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image": [b"row0", b"", b"row2"]}), table)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")

    refs = [str(good), str(tmp_path / "missing.png"), parquet_ref(str(table), "image", 2),
            parquet_ref(str(table), "image", 1), parquet_ref(str(broken), "image", 0),
            parquet_ref(str(broken), "image", 3), str(empty)]
    got = read_refs(refs)

    assert got[0] == (b"\x89PNG fake bytes", "")
    assert got[1][0] is None and got[1][1].startswith("unreadable file (") and "missing.png" in got[1][1]
    assert got[2] == (b"row2", "")
    assert got[3] == (None, "empty or non-bytes image cell")
    # A file that is not Parquet: both of its rows carry the reason, none is silently dropped.
    assert got[6] == (None, "empty file")
    for data, reason in got[4:6]:
        assert data is None and reason.startswith("unreadable Parquet file (")
