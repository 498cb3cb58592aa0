"""The wire side of the InfluxDB store: line protocol built column-wise with Arrow compute, InfluxQL
quoting and bound parameters, and the HTTP client (retries of transient failures only, errors scrubbed
of credentials). Kept apart from influxdb_store.py, which holds what is stored where and the replace
protocol, so each stays small.

The line protocol written here is InfluxDB 1.x's; InfluxDB 2/3 accept it on their v1-compatible
`/write?db=` endpoint too (not tested here: this project's CI runs Debian's InfluxDB 1.6).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import requests

from data_puller_dagster.io.errors import FrameContractError, StorageError

EMPTY = "dp_empty"  # the field of a row without any value (a point needs one field)
ERROR_CHARS = 400  # of a server message quoted in an error (a rejected line can be huge)
_HINTS = {
    400: "the server rejected the request (not retried)",
    401: "check the username and password options",
    403: "the user lacks a privilege on the database (e.g. GRANT ALL ON <database> TO <user>)",
    404: "create the database (CREATE DATABASE) or set create_database: true",
    413: "the request body is over the server's max-body-size; lower batch_size",
}


class InfluxDBError(StorageError):
    """An InfluxDB request failed; the message names the operation and never holds credentials."""


def tag_values_of(arr: pa.Array, column: str, where: str) -> pa.Array:
    """Escaped tag values (null stays null: the tag is left out). Line protocol cannot carry an empty
    tag value, a line break, or a backslash before a separator, so those are refused, not mangled."""
    if pc.any(pc.match_substring_regex(arr, r"^$|[\n\r\\]")).as_py():
        raise FrameContractError(
            f"{where}: column {column!r} is an InfluxDB tag and holds an empty value, a line break or a "
            "backslash, which line protocol cannot carry; clean the column or use another store"
        )
    return pc.replace_substring_regex(arr, pattern=r"([ ,=])", replacement=r"\\\1")


def field_values_of(arr: pa.ChunkedArray, kind: str, column: str, where: str) -> pa.Array:
    """The line-protocol text of one column's values (null where the value is missing)."""
    arr = arr.combine_chunks()
    if kind == "float":
        if pc.any(pc.is_inf(arr)).as_py():
            raise FrameContractError(
                f"{where}: column {column!r} holds +-inf, which InfluxDB cannot store; replace it with NaN"
            )
        return pc.cast(pc.if_else(pc.is_nan(arr), None, arr), pa.string())  # shortest round-trip text
    if kind in ("int", "tz", "naive"):
        try:
            ints = pc.cast(arr, pa.int64())
        except pa.ArrowInvalid:
            raise FrameContractError(
                f"{where}: column {column!r} holds integers beyond int64, which InfluxDB cannot store"
            ) from None
        return pc.binary_join_element_wise(pc.cast(ints, pa.string()), "i", "")
    if kind == "bool":
        return pc.if_else(arr, "t", "f")
    text = pc.replace_substring(pc.replace_substring(arr, "\\", "\\\\"), '"', '\\"')
    return pc.binary_join_element_wise('"', text, '"', "")


def encode_lines(measurement: str, tags: dict[str, Any], fields: dict[str, pa.Array], times: np.ndarray) -> pa.Array:
    """One line (ending in a newline) per row, built column by column with Arrow compute.

    `tags`: key -> escaped values (null: no tag on that row) or one constant str; `fields`: key ->
    value text (null: field left out); `times`: int64 timestamps in the write's precision.
    """
    n = len(times)
    parts: list[Any] = [measurement]
    for key in sorted(tags):  # sorted by key: what InfluxDB recommends for write speed
        v = tags[key]
        parts.append(f",{key}={v}" if isinstance(v, str) else pc.binary_join_element_wise(f",{key}=", v, ""))
    series = pc.binary_join_element_wise(*parts, pa.array([""] * n, pa.string()), "", null_handling="skip")
    joined = pa.array([""] * n, pa.string())
    if fields:
        pairs = [pc.binary_join_element_wise(f"{k}=", v, "") for k, v in fields.items()]
        joined = pc.binary_join_element_wise(*pairs, joined, ",", null_handling="skip")  # trailing ","
        joined = pc.utf8_slice_codeunits(joined, 0, -1)
    joined = pc.if_else(pc.equal(joined, ""), f"{EMPTY}=t", joined)
    stamps = pc.cast(pa.array(times, pa.int64()), pa.string())
    return pc.binary_join_element_wise(series, " ", joined, " ", stamps, "\n", "")


def request_bodies(lines: pa.Array, batch_size: int) -> Iterator[bytes]:
    """The request bodies of `lines`, `batch_size` lines each, cut straight from Arrow's buffers."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
    data = lines.buffers()[2]
    for i in range(0, len(lines), batch_size):
        yield data[int(offsets[i]) : int(offsets[min(i + batch_size, len(lines))])].to_pybytes()


def field_string(value: str) -> str:
    """A line-protocol string field value (quoted; backslash and double quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ident(name: str) -> str:
    """An InfluxQL identifier (the names used here are validated; quoting keeps keywords safe)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


SYMBOL = ident("symbol")


class Params(dict):
    """InfluxQL bound parameters: `p(value)` returns the placeholder; values never enter the text."""

    def __call__(self, value: Any) -> str:
        name = f"p{len(self)}"
        self[name] = value.item() if isinstance(value, np.generic) else value
        return f"${name}"


# ------------------------------------------------------------------------------------------ HTTP
class InfluxHTTP:
    """POSTs to one server and database. Credentials go only in the Authorization header (never a
    URL) and are scrubbed from every message anyway."""

    def __init__(self, url: str, database: str, auth: tuple[str, str] | None, timeout: float,
                 retries: int, backoff: float) -> None:  # fmt: skip
        self.url, self.database, self.retries, self.backoff = url, database, retries, backoff
        self._auth = auth
        self._timeout = (min(5.0, timeout), timeout)
        self._secrets = [s for s in (auth or ()) if len(s) >= 3]
        self._session = requests.Session()

    def write(self, what: str, body: bytes, precision: str) -> None:
        r = self.post(what, "/write", {"db": self.database, "precision": precision}, body)
        if r.status_code != 204:
            self.fail(what, r)

    def query(self, what: str, q: str, params: dict | None = None, db: bool = True) -> None:
        """Run statements (DDL, DELETE); raises on the first statement error."""
        r = self.post(what, "/query", {"db": self.database} if db else {}, _form(q, params))
        if r.status_code != 200:
            self.fail(what, r)
        for res in r.json().get("results", []):
            if "error" in res:
                raise InfluxDBError(self.scrub(f"{what} at {self.url}: {_shorten(res['error'])}"))

    def select(self, what: str, q: str, params: dict) -> tuple[list[str], list[list[Any]]]:
        """(columns, rows) of one SELECT, read as chunked JSON so no server row limit truncates it.
        A database that does not exist yet holds nothing: no rows."""
        query = {"db": self.database, "epoch": "ns", "chunked": "true", "chunk_size": "20000"}
        r = self.post(what, "/query", query, _form(q, params), stream=True)
        if r.status_code != 200:
            self.fail(what, r)
        names: list[str] = []
        values: list[list[Any]] = []
        try:
            for line in _lines(r):
                body = json.loads(line)
                for res in body.get("results", [body] if "error" in body else []):
                    if "error" in res:
                        if res["error"].startswith("database not found"):
                            return [], []
                        raise InfluxDBError(self.scrub(f"{what} at {self.url}: {_shorten(res['error'])}"))
                    for series in res.get("series", []):
                        names = series["columns"]
                        values.extend(series.get("values", []))
        except requests.RequestException as e:
            raise InfluxDBError(self.scrub(f"{what} at {self.url}: the answer broke off: {e}")) from None
        finally:
            r.close()
        return names, values

    def post(self, what: str, path: str, query: dict, data: Any, stream: bool = False) -> requests.Response:
        """POST with retries of connection errors, timeouts and 5xx (every request sent here is
        idempotent: the same points, DELETEs or SELECTs again); any other answer is returned."""
        cause = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))
            try:
                r = self._session.post(
                    f"{self.url}{path}", params=query, data=data, auth=self._auth, timeout=self._timeout, stream=stream
                )
            except (requests.ConnectionError, requests.Timeout) as e:
                cause = f"cannot reach InfluxDB ({type(e).__name__}: {e})"
                continue
            if r.status_code < 500:
                return r
            cause = f"HTTP {r.status_code}: {_server_message(r)}"
            r.close()
        raise InfluxDBError(self.scrub(f"{what} at {self.url}: {cause}, after {self.retries + 1} attempt(s); "
                                        "check the url option and that the server is up"))  # fmt: skip

    def fail(self, what: str, r: requests.Response) -> None:
        hint = _HINTS.get(r.status_code, "not retried")
        raise InfluxDBError(self.scrub(f"{what} at {self.url}: HTTP {r.status_code}: {_server_message(r)}; {hint}"))

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text


def _lines(r: requests.Response) -> Iterator[bytes]:
    """The non-empty lines of a streamed body (one JSON chunk each, megabytes long). Why not
    Response.iter_lines: it re-splits its growing buffer for every network read (seconds per year)."""
    parts: list[bytes] = []
    for block in r.iter_content(chunk_size=1 << 20):
        while (i := block.find(b"\n")) >= 0:
            line, parts, block = b"".join([*parts, block[:i]]), [], block[i + 1 :]
            if line.strip():
                yield line
        parts.append(block)
    if (line := b"".join(parts)).strip():
        yield line


def _form(q: str, params: dict | None) -> dict[str, str]:
    return {"q": q, **({"params": json.dumps(params)} if params else {})}


def _server_message(r: requests.Response) -> str:
    try:
        return _shorten(str(r.json().get("error", r.text)))
    except ValueError:
        return _shorten(r.text)


def _shorten(text: str) -> str:
    half = ERROR_CHARS // 2  # the head names the failure, the tail its reason after a quoted line
    return text if len(text) <= ERROR_CHARS else f"{text[:half]} ... {text[-half:]}"

