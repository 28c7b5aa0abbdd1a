"""A resumable download to a file (`data prepare --url`), with the standard library only.

Bytes go to `DEST.part`; a later call asks the server for the rest (`Range: bytes=N-`) and appends, or
starts over when the server ignores ranges. `DEST` appears, by a rename, only once the received size
equals the size the server announced, so an existing `DEST` is always a complete download.
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from robustmtl.errors import UserError

CHUNK = 1 << 20
TIMEOUT_S = 60.0
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")


def file_name(url: str) -> str:
    """The file name a URL downloads to (its last path segment)."""
    name = Path(unquote(urlparse(url).path)).name
    if not name:
        raise UserError(f"--url {url}: cannot tell a file name from it; give --from FILE to name the download")
    return name


def _open(url: str, start: int) -> http.client.HTTPResponse:
    headers = {"Range": f"bytes={start}-"} if start else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _completed_range(exc: urllib.error.HTTPError, start: int) -> bool:
    """A 416 to `bytes=start-` whose Content-Range says the file is exactly `start` bytes: nothing left to fetch."""
    match = UNSATISFIED_RANGE.fullmatch(exc.headers.get("Content-Range", "") or "")
    return exc.code == 416 and match is not None and int(match.group(1)) == start


def download(url: str, dest: Path, say: Callable[[str], None] = lambda _: None) -> Path:
    """Fetch `url` to `dest`, resuming `dest.part`; an existing `dest` is taken as done."""
    if urlparse(url).scheme not in ("http", "https"):
        raise UserError(f"--url {url}: only http:// and https:// addresses can be downloaded")
    if dest.is_file():
        say(f"{dest} is already downloaded")
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, start)
    except urllib.error.HTTPError as exc:
        if start and _completed_range(exc, start):
            os.replace(part, dest)
            return dest
        if start and exc.code == 416:  # the partial file is longer than the server's: start over
            part.unlink()
            return download(url, dest, say)
        raise UserError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot download {url}: {reason}") from None
    with response:
        total, offset = _expected(response, start)
        if offset != start:
            say(f"the server does not resume downloads: fetching {url} from the start")
        elif start:
            say(f"resuming {url} at byte {start}")
        _receive(response, part, offset)
    size = part.stat().st_size
    if total is not None and size != total:
        raise UserError(f"download of {url} stopped at {size} of {total} bytes; run the same command again to "
                        f"resume (kept {part})")
    os.replace(part, dest)
    return dest


def _expected(response: http.client.HTTPResponse, start: int) -> tuple[int | None, int]:
    """(the full file size if the server says it, the byte offset this response starts at)."""
    if response.status == 206:
        match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "") or "")
        if match is None or int(match.group(1)) != start:
            raise UserError(f"the server answered a resume request with {response.headers.get('Content-Range')!r}; "
                            "delete the .part file and download again")
        return (int(match.group(3)) if match.group(3) != "*" else None), start
    length = response.headers.get("Content-Length")
    return (int(length) if length and length.isdigit() else None), 0


def _receive(response: http.client.HTTPResponse, part: Path, offset: int) -> None:
    """Append the body to `part` from `offset`; a connection cut short keeps what arrived (flushed to disk)."""
    with part.open("r+b" if offset and part.exists() else "wb") as out:
        out.seek(offset)
        out.truncate()
        try:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except http.client.IncompleteRead as exc:  # the connection closed early: keep what arrived
                    out.write(exc.partial)
                    break
                except OSError:  # reset or timed out: the size check after this tells the user to resume
                    break
                if not chunk:
                    break
                out.write(chunk)
        finally:
            out.flush()
            os.fsync(out.fileno())
