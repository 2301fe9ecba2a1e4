"""Faithful local stand-ins for the NamUs, FBI Wanted and Interpol notice APIs.

Serves the same endpoints and JSON shapes as the real services (docs/ingest.md) from a
data folder written by ``fixtures.write_fixture_cases``, re-read on every request so
a test can change cases between ingest runs. Faults are injected from a spec:

    5xx=N          each distinct request fails N times with 503 before it succeeds
    429=N:S        each distinct request gets N answers 429 with ``Retry-After: S``
    slow=S[:N]     responses wait S seconds (only the first N per request if N is given)
    malformed=IDS  case bodies for these case ids are cut-off JSON
    gone=IDS       these cases 404 although the listing still shows them (stale search)
    truncated=IDS  these photos are served cut in half
    nonimage=IDS   these photos are an HTML page served as image/jpeg
    bomb=IDS       these case bodies are a ~200 KB gzip stream that inflates to ~200 MB
                   (the case JSON, then spaces): a memory attack by a source or a man in the middle
    deep=IDS       these case bodies are JSON nested 100,000 levels deep
    hugeint=IDS    these case bodies carry a 5,000-digit number
    badutf8=IDS    these case bodies are not valid UTF-8
    redirect=IDS   these photos answer 302 to ``redirect_to`` (default: the cloud metadata
                   credentials path, http://169.254.169.254/latest/meta-data/iam/security-credentials/)
    redirect_to=URL  where ``redirect`` points (the last item of a spec, as a URL may hold commas)

``IDS`` is ``id+id+...`` or ``*`` for all; a photo id is ``case/photo`` or ``photo``.
Faults combine with commas: ``5xx=2,429=1:1,truncated=*``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

NAMUS_API = "/api/CaseSets/NamUs"
NAMUS_PROJECTIONS = {
    "namus2Number": ("id",),
    "idFormatted": ("idFormatted",),
    "firstName": ("subjectIdentification", "firstName"),
    "middleName": ("subjectIdentification", "middleName"),
    "lastName": ("subjectIdentification", "lastName"),
    "dateOfLastContact": ("sighting", "date"),
    "computedMissingMinAge": ("subjectIdentification", "computedMissingMinAge"),
    "computedMissingMaxAge": ("subjectIdentification", "computedMissingMaxAge"),
    "currentAgeFrom": ("subjectIdentification", "currentMinAge"),
    "currentAgeTo": ("subjectIdentification", "currentMaxAge"),
    "cityOfLastContact": ("sighting", "address", "city"),
    "stateOfLastContact": None,  # computed: both sighting shapes
    "gender": ("subjectDescription", "sex", "name"),
    "modifiedDateTime": ("modifiedDateTime",),
    "createdDateTime": ("createdDateTime",),
    "images": ("images",),
}
METADATA_CREDENTIALS_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
ID_FAULTS = {  # spec name -> Faults field
    "malformed": "malformed",
    "gone": "gone",
    "truncated": "truncated",
    "nonimage": "non_image",
    "bomb": "bomb",
    "deep": "deep",
    "hugeint": "huge_int",
    "badutf8": "bad_utf8",
    "redirect": "redirect",
}
BOMB_DECODED_BYTES = 200 * 1024 * 1024
NON_IMAGE = b"<!DOCTYPE html><html><head><title>Access Denied</title></head><body>Reference #18.1</body></html>"
INTERPOL_WINDOW = 160  # a query only ever exposes its first 160 results
INTERPOL_MAX_PER_PAGE = 160
FBI_MAX_PAGE_SIZE = 50


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic() when the request arrived
    method: str
    path: str
    status: int
    user_agent: str


def _ids(value: str) -> frozenset[str]:
    return frozenset(part.strip() for part in value.split("+") if part.strip())


@dataclass
class Faults:
    server_errors: int = 0
    rate_limited: int = 0
    retry_after: float = 1.0
    slow_seconds: float = 0.0
    slow_count: int | None = None
    malformed: frozenset[str] = frozenset()
    gone: frozenset[str] = frozenset()
    truncated: frozenset[str] = frozenset()
    non_image: frozenset[str] = frozenset()
    bomb: frozenset[str] = frozenset()
    deep: frozenset[str] = frozenset()
    huge_int: frozenset[str] = frozenset()
    bad_utf8: frozenset[str] = frozenset()
    redirect: frozenset[str] = frozenset()
    redirect_to: str = METADATA_CREDENTIALS_URL
    seen: dict[str, int] = field(default_factory=dict)  # request key -> times seen
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def parse(cls, spec: str | None) -> Faults:
        faults = cls()
        spec, _, redirect_to = (spec or "").partition("redirect_to=")
        if redirect_to:
            faults.redirect_to = redirect_to.strip()
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, value = item.partition("=")
            try:
                if name == "5xx":
                    faults.server_errors = int(value)
                elif name == "429":
                    count, _, after = value.partition(":")
                    faults.rate_limited, faults.retry_after = int(count), float(after or 1)
                elif name == "slow":
                    seconds, _, count = value.partition(":")
                    faults.slow_seconds, faults.slow_count = float(seconds), int(count) if count else None
                elif name in ID_FAULTS:
                    setattr(faults, ID_FAULTS[name], _ids(value))
                else:
                    raise ValueError(f"unknown fault {name!r}")
            except ValueError as error:
                raise ValueError(
                    f"bad fault {item!r} in {spec!r} ({error}); expected e.g. "
                    "5xx=2,429=1:3,slow=0.5:1,malformed=101,gone=102,truncated=103/1,nonimage=*"
                ) from None
        return faults

    def count(self, key: str) -> int:
        """How many times this request was seen before (0 the first time)."""
        with self.lock:
            seen = self.seen.get(key, 0)
            self.seen[key] = seen + 1
        return seen

    @staticmethod
    def hits(ids: frozenset[str], *candidates: str) -> bool:
        return "*" in ids or any(c in ids for c in candidates)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that stops reading (a size cap, a timeout) is normal here, not an error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s went away", client_address)
            return
        super().handle_error(request, client_address)


class SourceServer:
    """A running dev server (in a thread); use ``start``/``stop`` or ``with``."""

    def __init__(self, source: str, data_dir: str | Path, port: int = 0, faults: str | Faults | None = None) -> None:
        if source not in ("namus", "fbi", "interpol"):
            raise ValueError(f"unknown source {source!r}")
        self.source = source
        self.data = Path(data_dir)
        if not self.data.is_dir():
            raise FileNotFoundError(f"data folder {self.data} does not exist (write it with write_fixture_cases)")
        self.faults = faults if isinstance(faults, Faults) else Faults.parse(faults)
        self.requests: list[Request] = []  # every answered request, for tests and the benchmark
        handler = type("Handler", (_Handler,), {"app": self})
        self.httpd = _QuietServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> SourceServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=f"{self.source}-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> SourceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- data -----------------------------------------------------------------------
    def load(self, relative: str) -> Any:
        path = self.data / relative
        if not path.is_file():
            return None
        return json.loads(path.read_text().replace("{{BASE}}", self.url))

    def all_in(self, folder: str) -> list[dict]:
        return [self.load(f"{folder}/{p.name}") for p in sorted((self.data / folder).glob("*.json"))]

    def image(self, case_id: str, photo_id: str) -> tuple[bytes, str] | None:
        path = self.data / "images" / case_id / photo_id
        if not re.fullmatch(r"[\w.-]+", case_id + photo_id) or not path.is_file():
            return None
        meta = self.load(f"images/{case_id}/{photo_id}.meta.json") or {}
        return path.read_bytes(), meta.get("mime_type", "image/jpeg")


class _Handler(BaseHTTPRequestHandler):
    app: SourceServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature from the base class)
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET", b"")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self._handle("POST", self.rfile.read(length) if length else b"")

    # --- plumbing ---------------------------------------------------------------------
    def _handle(self, method: str, body: bytes) -> None:
        self._arrived = time.monotonic()
        faults = self.app.faults
        key = f"{method} {self.path} {body[:2000]!r}"
        seen = faults.count(key)
        if faults.slow_seconds and (faults.slow_count is None or seen < faults.slow_count):
            time.sleep(faults.slow_seconds)
        if seen < faults.server_errors:
            return self._send(503, b'{"message": "Service Unavailable"}', "application/json")
        if seen < faults.server_errors + faults.rate_limited:
            return self._send(
                429, b'{"message": "Too Many Requests"}', "application/json", {"Retry-After": f"{faults.retry_after:g}"}
            )
        route = getattr(self, f"_{self.app.source}")
        self._encoding = self._location = None
        try:
            status, payload, content_type = route(method, urlsplit(self.path), body)
        except Exception as error:  # the dev server must answer, like the real one, not hang up
            log.exception("dev server error on %s %s", method, self.path)
            status, payload, content_type = 500, json.dumps({"message": str(error)}).encode(), "application/json"
        extra = {"Content-Encoding": self._encoding} if self._encoding else {}
        if self._location:
            extra["Location"] = self._location
        self._send(status, payload, content_type, extra)

    def _send(self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.app.requests.append(
            Request(self._arrived, self.command, self.path, status, self.headers.get("User-Agent", ""))
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    @staticmethod
    def _json(status: int, value: Any) -> tuple[int, bytes, str]:
        return status, json.dumps(value).encode(), "application/json; charset=utf-8"

    def _case_body(self, case_id: str, value: Any) -> tuple[int, bytes, str]:
        faults = self.app.faults
        if value is None or faults.hits(faults.gone, case_id):
            return self._json(404, {"message": "Not Found"})
        status, payload, content_type = self._json(200, value)
        if faults.hits(faults.malformed, case_id):
            payload = payload[: max(1, len(payload) // 2)]  # cut mid-object: not JSON
        if faults.hits(faults.deep, case_id):
            payload = payload[:-1] + b', "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        if faults.hits(faults.huge_int, case_id):
            payload = payload[:-1] + b', "extra": ' + b"9" * 5000 + b"}"
        if faults.hits(faults.bad_utf8, case_id):
            payload = payload.replace(b'"', b'"\xff\xfe', 1)
        if faults.hits(faults.bomb, case_id):
            self._encoding = "gzip"
            payload = gzip_bomb(payload)
        return status, payload, content_type

    def _photo(self, case_id: str, photo_id: str) -> tuple[int, bytes, str]:
        faults = self.app.faults
        found = self.app.image(case_id, photo_id)
        if found is None:
            return self._json(404, {"message": "Not Found"})
        data, mime_type = found
        names = (f"{case_id}/{photo_id}", photo_id)
        if faults.hits(faults.redirect, *names):
            self._location = faults.redirect_to
            return 302, b"", "text/plain"
        if faults.hits(faults.non_image, *names):
            return 200, NON_IMAGE, "image/jpeg"
        if faults.hits(faults.truncated, *names):
            data = data[: len(data) // 2]
        return 200, data, mime_type

    # --- NamUs --------------------------------------------------------------------------
    def _namus(self, method: str, url: Any, body: bytes) -> tuple[int, bytes, str]:
        path = url.path
        if method == "GET" and path == f"{NAMUS_API}/States":
            states = self.app.load("states.json")
            if states is None:  # a data folder without states.json: the states its cases use
                names = sorted({s for s in map(_namus_state, self.app.all_in("cases")) if s})
                states = [{"id": i + 1, "name": n, "displayName": n[:2].upper()} for i, n in enumerate(names)]
            return self._json(200, states)
        if method == "POST" and path == f"{NAMUS_API}/MissingPersons/Search":
            return self._namus_search(body)
        match = re.fullmatch(rf"{NAMUS_API}/MissingPersons/Cases/(\d+)", path)
        if method == "GET" and match:
            return self._case_body(match.group(1), self.app.load(f"cases/{match.group(1)}.json"))
        match = re.fullmatch(rf"{NAMUS_API}/MissingPersons/Cases/(\d+)/Images/(\w+)/(Original|Download)", path)
        if method == "GET" and match:
            return self._photo(match.group(1), match.group(2))
        return self._json(404, {"message": f"No HTTP resource was found that matches the request URI '{path}'."})

    def _namus_search(self, body: bytes) -> tuple[int, bytes, str]:
        try:
            query = json.loads(body)
        except json.JSONDecodeError:
            return self._json(400, {"message": "The request is invalid."})
        ordered_by = [o.get("field") for o in query.get("orderSpecifications") or [] if isinstance(o, dict)]
        invalid = [p for p in (query.get("projections") or []) + ordered_by if p not in NAMUS_PROJECTIONS]
        if invalid:
            return self._json(400, {"message": " ".join(f'Invalid field name "{p}".' for p in invalid)})
        states = None
        for predicate in query.get("predicates") or []:
            if predicate.get("operator") != "IsIn":  # the real API 500s on every other operator
                return self._json(500, {"message": "An error has occurred."})
            if predicate.get("field") == "stateOfLastContact":
                states = set(predicate.get("values") or [])
        cases = [c for c in self.app.all_in("cases") if states is None or _namus_state(c) in states]
        cases.sort(key=lambda c: c["id"])
        skip, take = int(query.get("skip", 0)), int(query.get("take", 10000))
        results = []
        for case in cases[skip : skip + min(take, 10000)]:
            row = {p: _namus_project(case, p) for p in query.get("projections") or ["namus2Number"]}
            row["link"] = f"/MissingPersons/Case#/{case['id']}"
            row["image"] = f"{NAMUS_API}/MissingPersons/Cases/{case['id']}/Images/Default/Thumbnail"
            results.append(row)
        return self._json(200, {"count": len(cases), "results": results})

    # --- FBI ----------------------------------------------------------------------------
    def _fbi(self, method: str, url: Any, body: bytes) -> tuple[int, bytes, str]:
        path, query = url.path, parse_qs(url.query)
        if method == "GET" and path in ("/wanted/v1/list", "/@wanted"):
            page = int(query.get("page", ["1"])[0])
            size = min(int(query.get("pageSize", ["20"])[0]), FBI_MAX_PAGE_SIZE)
            items = sorted(self.app.all_in("items"), key=lambda i: (i.get("modified") or "", i["uid"]), reverse=True)
            return self._json(200, {"total": len(items), "page": page, "items": items[(page - 1) * size : page * size]})
        match = re.fullmatch(r"/@wanted-person/([\w-]+)", path)
        if method == "GET" and match:
            return self._case_body(match.group(1), self.app.load(f"items/{match.group(1)}.json"))
        match = re.fullmatch(r"/images/([\w-]+)/([\w.-]+?)(/large|/thumb)?", path)
        if method == "GET" and match:
            return self._photo(match.group(1), match.group(2))
        return self._json(404, {"message": "Not Found"})

    # --- Interpol -------------------------------------------------------------------------
    def _interpol(self, method: str, url: Any, body: bytes) -> tuple[int, bytes, str]:
        path, query = url.path, {k: v[0] for k, v in parse_qs(url.query).items()}
        base = f"{self.app.url}/notices/v1/yellow"
        if method == "GET" and path == "/notices/v1/yellow":
            return self._interpol_list(query, base)
        match = re.fullmatch(r"/notices/v1/yellow/(\d{4}-\d+)", path)
        if method == "GET" and match:
            notice = self.app.load(f"notices/{match.group(1)}.json")
            if notice is not None:
                notice.pop("_pictures", None)
            return self._case_body(match.group(1), notice)
        match = re.fullmatch(r"/notices/v1/yellow/(\d{4}-\d+)/images", path)
        if method == "GET" and match:
            notice = self.app.load(f"notices/{match.group(1)}.json")
            if notice is None:
                return self._json(404, {"message": "Not Found"})
            images = [
                {"picture_id": p, "_links": {"self": {"href": f"{base}/{match.group(1)}/images/{p}"}}}
                for p in notice.get("_pictures", [])
            ]
            return self._json(200, {"_embedded": {"images": images}, "_links": {"self": {"href": base + path}}})
        match = re.fullmatch(r"/notices/v1/yellow/(\d{4}-\d+)/images/(\w+)", path)
        if method == "GET" and match:
            return self._photo(match.group(1), match.group(2))
        return self._json(404, {"message": "Not Found"})

    def _interpol_list(self, query: dict[str, str], base: str) -> tuple[int, bytes, str]:
        try:
            page = max(1, int(query.get("page", 1)))
            per_page = min(INTERPOL_MAX_PER_PAGE, max(1, int(query.get("resultPerPage", 20))))
            age_min, age_max = int(query.get("ageMin", 0)), int(query.get("ageMax", 999))
        except ValueError:
            return self._json(400, {"message": "invalid query"})
        notices = []
        for notice in self.app.all_in("notices"):
            if query.get("sexId") and notice.get("sex_id") != query["sexId"]:
                continue
            age = _interpol_age(notice)
            if ("ageMin" in query or "ageMax" in query) and (age is None or not age_min <= age <= age_max):
                continue
            notices.append(notice)
        notices.sort(key=lambda n: n["entity_id"], reverse=True)
        visible = notices[:INTERPOL_WINDOW]
        last = max(1, -(-len(visible) // per_page))
        items = []
        for notice in visible[(page - 1) * per_page : page * per_page]:
            item = {k: notice.get(k) for k in ("forename", "name", "date_of_birth", "entity_id", "nationalities")}
            item["_links"] = notice["_links"]
            items.append(item)

        def link(number: int) -> dict:
            extra = "".join(f"&{k}={v}" for k, v in sorted(query.items()) if k not in ("page", "resultPerPage"))
            return {"href": f"{base}?{extra}&resultPerPage={per_page}&page={number}"}

        links = {"self": link(page), "first": link(1), "last": link(last)}
        if page < last:
            links["next"] = link(page + 1)
        return self._json(
            200,
            {
                "total": len(notices),
                "query": {"page": page, "resultPerPage": per_page, **{k: v for k, v in query.items() if k != "page"}},
                "_embedded": {"notices": items},
                "_links": links,
            },
        )


@functools.cache
def _bomb_padding() -> tuple[bytes, bytes]:
    """A gzip member of ``BOMB_DECODED_BYTES`` spaces (~200 KB), split before its trailer."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = b" " * (1024 * 1024)
    body = b"".join(compressor.compress(block) for _ in range(BOMB_DECODED_BYTES // len(block)))
    return body, compressor.flush()


def gzip_bomb(payload: bytes) -> bytes:
    """``payload`` followed by ~200 MB of spaces (still valid JSON), as one gzip stream of ~200 KB."""
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, no name, no mtime
    head = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    lead = head.compress(payload) + head.flush(zlib.Z_FULL_FLUSH)  # byte-aligned: raw streams concatenate
    padding, tail = _bomb_padding()
    crc = zlib.crc32(b" " * (1024 * 1024), zlib.crc32(payload))
    for _ in range(BOMB_DECODED_BYTES // (1024 * 1024) - 1):
        crc = zlib.crc32(b" " * (1024 * 1024), crc)
    size = (len(payload) + BOMB_DECODED_BYTES) & 0xFFFFFFFF
    return header + lead + padding + tail + struct.pack("<II", crc & 0xFFFFFFFF, size)


def _namus_state(case: dict) -> str | None:
    sighting = case.get("sighting") or {}
    address = sighting.get("address")
    if isinstance(address, dict):
        return (address.get("state") or {}).get("name")
    return sighting.get("state")


def _namus_project(case: dict, projection: str) -> Any:
    if projection == "stateOfLastContact":
        return _namus_state(case)
    value: Any = case
    for step in NAMUS_PROJECTIONS[projection]:
        value = value.get(step) if isinstance(value, dict) else None
    return value


def _interpol_age(notice: dict) -> int | None:
    born = str(notice.get("date_of_birth") or "")[:4]
    return time.gmtime().tm_year - int(born) if born.isdigit() else None
