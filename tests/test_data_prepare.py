"""`robustmtl data prepare`: small archives in each benchmark's real layout become the folder its loader reads.

Every failure is one line, exit 2, and leaves neither DATA_ROOT/NAME nor a half-written folder behind.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import random
import re
import signal
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from robustmtl.data.check import build_splits, dataset_params
from robustmtl.data.civilcomments import IDENTITIES
from robustmtl.data.prepare import RECORD
from tests.conftest import REPO
from tests.test_data_benchmarks import make_celeba, make_multinli, make_waterbirds, sentence

WATERBIRDS_TOP = "waterbird_complete95_forest2water2"
KILL_PADDING_FILES = 100
KILL_AT_MEMBER = 40  # the unpacking is held after this many files, with the padding still to come


def make_civilcomments_complete(root: Path) -> Path:
    """Every (label, identity) group and both training groups in every split, so the closing check passes."""
    rng = random.Random(4)
    rows = []
    for split in ("train", "val", "test"):
        for toxic in (0, 1):
            for identity in IDENTITIES:
                row = {name: 0.0 for name in IDENTITIES}
                row.update({"comment_text": sentence(rng), "split": split, "toxicity": 0.9 if toxic else 0.1,
                            identity: 0.8})
                rows.append(row)
            rows.append({**{name: 0.0 for name in IDENTITIES}, "comment_text": sentence(rng), "split": split,
                         "toxicity": 0.9 if toxic else 0.1})  # mentions no identity
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "all_data_with_identities.csv")
    (root / "RELEASE_v1.0.txt").write_text("CivilComments-wilds v1.0\n")
    return root


def tar_folder(folder: Path, archive: Path, top: str) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=top)
    return archive


def zip_files(archive: Path, files: dict[str, Path]) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in files.items():
            zf.write(path, name)
    return archive


def zip_folder(folder: Path, archive: Path, top: str = "") -> Path:
    files = {(Path(top) / p.relative_to(folder)).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return zip_files(archive, files)


# Each layout: (the original tree the loader reads, the --from paths a user has after downloading).
def waterbirds_tar(tmp: Path) -> tuple[Path, list[Path]]:
    tree = make_waterbirds_tree(tmp)
    return tree, [tar_folder(tree, tmp / f"{WATERBIRDS_TOP}.tar.gz", WATERBIRDS_TOP)]


def make_waterbirds_tree(tmp: Path) -> Path:
    tree = tmp / "orig" / WATERBIRDS_TOP
    tree.mkdir(parents=True)
    return make_waterbirds(tree)


def celeba_kaggle_folder(tmp: Path) -> tuple[Path, list[Path]]:
    """Kaggle's files downloaded one by one: img_align_celeba.zip beside the two CSV files."""
    tree = make_celeba(tmp / "orig")
    download = tmp / "kaggle"
    download.mkdir()
    zip_folder(tree / "img_align_celeba" / "img_align_celeba", download / "img_align_celeba.zip", "img_align_celeba")
    for name in ("list_attr_celeba.csv", "list_eval_partition.csv"):
        (download / name).write_bytes((tree / name).read_bytes())
    return tree, [download]


def celeba_kaggle_archive(tmp: Path) -> tuple[Path, list[Path]]:
    """Kaggle's one archive: the CSVs and img_align_celeba/img_align_celeba/*.jpg."""
    tree = make_celeba(tmp / "orig")
    return tree, [zip_folder(tree, tmp / "archive.zip")]


def celeba_original_edition(tmp: Path) -> tuple[Path, list[Path]]:
    """CelebA's own download: Img/img_align_celeba.zip, Anno/list_attr_celeba.txt, Eval/list_eval_partition.txt
    (space-aligned TXT, the attribute file headed by the image count and the attribute names)."""
    tree = make_celeba(tmp / "orig")
    attrs = pd.read_csv(tree / "list_attr_celeba.csv")
    parts = pd.read_csv(tree / "list_eval_partition.csv")
    got = tmp / "celeba_drive"
    for folder in ("Img", "Anno", "Eval"):
        (got / folder).mkdir(parents=True)
    zip_folder(tree / "img_align_celeba" / "img_align_celeba", got / "Img" / "img_align_celeba.zip", "img_align_celeba")
    names = list(attrs.columns[1:])
    rows = [f"{r[0]} " + " ".join(f"{v:2d}" for v in r[1:]) for r in attrs.itertuples(index=False)]
    (got / "Anno" / "list_attr_celeba.txt").write_text("\n".join([str(len(attrs)), " ".join(names), *rows]) + "\n")
    (got / "Eval" / "list_eval_partition.txt").write_text("".join(f"{r[0]} {r[1]}\n" for r in parts.itertuples(
        index=False)))
    return tree, [got / "Img" / "img_align_celeba.zip", got / "Anno" / "list_attr_celeba.txt",
                  got / "Eval" / "list_eval_partition.txt"]


def multinli_glue_zip(tmp: Path) -> tuple[Path, list[Path]]:
    """GLUE's MNLI.zip (MNLI/*.tsv) and group DRO's metadata_random.csv, given separately."""
    tree = make_multinli(tmp / "orig")
    mnli = zip_folder(tree / "glue_data" / "MNLI", tmp / "MNLI.zip", "MNLI")
    return tree, [mnli, tree / "data" / "metadata_random.csv"]


def civilcomments_tar(tmp: Path) -> tuple[Path, list[Path]]:
    tree = make_civilcomments_complete(tmp / "orig" / "civilcomments_v1.0")
    return tree, [tar_folder(tree, tmp / "civilcomments_v1.0.tar.gz", "civilcomments_v1.0")]


def civilcomments_wilds_blob(tmp: Path) -> tuple[Path, list[Path]]:
    """What the `wilds` package downloads: the folder's files at the archive's top, named ./file."""
    tree = make_civilcomments_complete(tmp / "orig" / "civilcomments_v1.0")
    return tree, [tar_folder(tree, tmp / "archive.tar.gz", ".")]


LAYOUTS = {
    "waterbirds": waterbirds_tar,
    "celeba-folder": celeba_kaggle_folder,
    "celeba-archive": celeba_kaggle_archive,
    "celeba-original": celeba_original_edition,
    "multinli": multinli_glue_zip,
    "civilcomments": civilcomments_tar,
    "civilcomments-blob": civilcomments_wilds_blob,
}


def dataset_of(layout: str) -> str:
    return layout.split("-")[0]


def prepare(cli, name: str, data_root: Path, *sources: Path, extra: tuple[str, ...] = (), ok: bool = True):
    args = ["data", "prepare", name, "--data-root", data_root, *extra]
    for source in sources:
        args += ["--from", source]
    return cli(*args, ok=ok)


def left_in(data_root: Path) -> list[str]:
    """What a prepare left in the data root, lock files aside (they hold no data)."""
    if not data_root.exists():
        return []
    return sorted(p.name for p in data_root.iterdir() if not p.name.endswith(".prepare.lock"))


def assert_refused(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.output


def build(name: str, root: Path):
    return build_splits(name, dataset_params(name, {}), root)


def same_data(a, b) -> None:
    for split_a, split_b in zip(a.by_name().values(), b.by_name().values(), strict=True):
        assert torch.equal(split_a.y, split_b.y) and torch.equal(split_a.g, split_b.g)
        assert torch.equal(split_a.membership, split_b.membership)
        if hasattr(split_a, "source"):
            for pa, pb in zip(split_a.source.paths, split_b.source.paths, strict=True):
                assert pa.read_bytes() == pb.read_bytes()
        if hasattr(split_a, "texts"):
            assert split_a.texts == split_b.texts and split_a.second == split_b.second


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_prepare_makes_the_loaders_layout(cli, tmp_path, layout):
    name = dataset_of(layout)
    tree, sources = LAYOUTS[layout](tmp_path)
    data_root = tmp_path / "data"
    result = prepare(cli, name, data_root, *sources)
    assert f"prepared {name} in {data_root / name}" in result.stdout and "all examples" in result.stdout
    assert left_in(data_root) == [name] and not (data_root / name / ".raw").exists()
    same_data(build(name, data_root), build(name, tree))
    record = json.loads((data_root / name / RECORD).read_text())
    assert [s["name"] for s in record["sources"]] == [s.name for s in sources]
    for entry, source in zip(record["sources"], sources, strict=True):
        if source.is_file():
            assert entry["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_second_prepare_over_a_finished_one_does_nothing(cli, tmp_path):
    _, sources = waterbirds_tar(tmp_path)
    data_root = tmp_path / "data"
    prepare(cli, "waterbirds", data_root, *sources)
    record = data_root / "waterbirds" / RECORD
    before = (record.stat().st_mtime_ns, sorted(p.name for p in (data_root / "waterbirds").rglob("*")))
    result = prepare(cli, "waterbirds", data_root, *sources)
    assert "already prepared" in result.stdout and "all examples" in result.stdout  # and it checks again
    assert (record.stat().st_mtime_ns, sorted(p.name for p in (data_root / "waterbirds").rglob("*"))) == before


def test_prepare_over_another_archive_or_a_foreign_folder_is_refused(cli, tmp_path):
    _, sources = waterbirds_tar(tmp_path)
    data_root = tmp_path / "data"
    prepare(cli, "waterbirds", data_root, *sources)
    other = tmp_path / "other.tar.gz"
    other.write_bytes(sources[0].read_bytes() + b"\0" * 512)
    assert_refused(prepare(cli, "waterbirds", data_root, other, ok=False), "remove it first")
    make_celeba(data_root / "celeba")  # unpacked by hand: checked, never overwritten
    assert_refused(prepare(cli, "celeba", data_root, *celeba_kaggle_archive(tmp_path / "c")[1], ok=False),
                   "was not made by robustmtl data prepare")


def test_truncated_archive_is_refused_and_leaves_nothing(cli, tmp_path):
    _, (archive,) = waterbirds_tar(tmp_path)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    data_root = tmp_path / "data"
    assert_refused(prepare(cli, "waterbirds", data_root, archive, ok=False), "damaged or truncated")
    assert left_in(data_root) == []


def test_plain_tar_cut_after_a_whole_member_is_refused(cli, tmp_path):
    """Cut at a member boundary, a plain tar still lists cleanly: only its missing end blocks tell."""
    tree = make_civilcomments_complete(tmp_path / "orig" / "civilcomments_v1.0")
    archive = tmp_path / "civilcomments.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(tree, arcname="civilcomments_v1.0")
    with tarfile.open(archive) as tf:
        first = tf.getmembers()[1]
    archive.write_bytes(archive.read_bytes()[: first.offset_data + -(-first.size // 512) * 512])
    data_root = tmp_path / "data"
    assert_refused(prepare(cli, "civilcomments", data_root, archive, ok=False), "damaged or truncated")
    assert left_in(data_root) == []


def test_truncated_zip_is_refused(cli, tmp_path):
    _, (archive,) = celeba_kaggle_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:-100])  # the central directory is at the end
    assert_refused(prepare(cli, "celeba", tmp_path / "data", archive, ok=False), "damaged or truncated")


def test_damage_found_while_unpacking_leaves_no_half_written_folder(cli, tmp_path):
    """A zip lists from its directory at the end, so a corrupt file is found only while unpacking it."""
    tree = make_waterbirds(tmp_path / "orig")
    archive = zip_folder(tree, tmp_path / "waterbirds.zip", WATERBIRDS_TOP)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        last = max(zf.infolist(), key=lambda i: i.header_offset)
    offset = last.header_offset + 30 + len(last.filename.encode()) + len(last.extra)
    data[offset + 2] ^= 0xFF  # a flipped byte in the last file's data
    archive.write_bytes(bytes(data))
    data_root = tmp_path / "data"
    assert_refused(prepare(cli, "waterbirds", data_root, archive, ok=False), "damaged or truncated")
    assert left_in(data_root) == []


def test_wrong_checksum_is_refused_before_unpacking(cli, tmp_path):
    _, (archive,) = waterbirds_tar(tmp_path)
    data_root = tmp_path / "data"
    assert_refused(prepare(cli, "waterbirds", data_root, archive, extra=("--sha256", "0" * 64), ok=False),
                   "SHA-256")
    assert left_in(data_root) == []
    right = hashlib.sha256(archive.read_bytes()).hexdigest()
    prepare(cli, "waterbirds", data_root, archive, extra=("--sha256", right.upper()))
    assert left_in(data_root) == ["waterbirds"]


def test_too_little_space_is_refused_before_unpacking(cli, tmp_path, monkeypatch):
    _, (archive,) = waterbirds_tar(tmp_path)
    with tarfile.open(archive) as tf:
        needed = sum(m.size for m in tf.getmembers() if m.isfile())
    monkeypatch.setattr("robustmtl.data.prepare.free_bytes", lambda path: needed - 1)
    data_root = tmp_path / "data"
    assert_refused(prepare(cli, "waterbirds", data_root, archive, ok=False), "free space or choose another --data-root")
    assert left_in(data_root) == []
    monkeypatch.setattr("robustmtl.data.prepare.free_bytes", lambda path: needed)
    prepare(cli, "waterbirds", data_root, archive)


def test_archive_of_another_dataset_is_named(cli, tmp_path):
    _, (archive,) = civilcomments_tar(tmp_path)
    data_root = tmp_path / "data"
    assert_refused(prepare(cli, "waterbirds", data_root, archive, ok=False), "is this civilcomments?")
    assert_refused(prepare(cli, "multinli", data_root, archive, ok=False), "no metadata_random.csv")
    assert left_in(data_root) == []


def test_archive_missing_images_is_refused(cli, tmp_path):
    tree = make_waterbirds_tree(tmp_path)
    gone = pd.read_csv(tree / "metadata.csv")["img_filename"][5]
    (tree / gone).unlink()
    archive = tar_folder(tree, tmp_path / "w.tar.gz", WATERBIRDS_TOP)
    data_root = tmp_path / "data"
    assert_refused(prepare(cli, "waterbirds", data_root, archive, ok=False), "1 images that the metadata names")
    assert left_in(data_root) == []


@pytest.mark.slow
def test_prepare_killed_while_unpacking_leaves_no_dataset_folder(cli, tmp_path, pause):
    """SIGKILL mid-unpack (no cleanup runs): DATA_ROOT/waterbirds must not exist, and the next prepare works."""
    tree = make_waterbirds_tree(tmp_path)
    for i in range(KILL_PADDING_FILES):  # files still to unpack when the kill lands
        (tree / "padding" / f"{i}.png").parent.mkdir(exist_ok=True)
        (tree / "padding" / f"{i}.png").write_bytes(b"x" * 100)
    archive = tar_folder(tree, tmp_path / f"{WATERBIRDS_TOP}.tar.gz", WATERBIRDS_TOP)
    data_root = tmp_path / "data"
    pause.at(KILL_AT_MEMBER)
    proc = subprocess.Popen([sys.executable, "-m", "robustmtl", "data", "prepare", "waterbirds", "--from", archive,
                             "--data-root", data_root], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pause.waited("unpack", KILL_AT_MEMBER, proc)
        assert (data_root / ".waterbirds.partial").is_dir()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    pause.release()
    assert proc.returncode == -signal.SIGKILL
    assert not (data_root / "waterbirds").exists()
    prepare(cli, "waterbirds", data_root, archive)
    assert left_in(data_root) == ["waterbirds"]
    assert (data_root / "waterbirds" / "padding" / f"{KILL_PADDING_FILES - 1}.png").is_file()


def test_a_killed_prepares_leftovers_are_cleared(cli, tmp_path):
    _, sources = waterbirds_tar(tmp_path)
    data_root = tmp_path / "data"
    stale = data_root / ".waterbirds.partial"
    stale.mkdir(parents=True)
    (stale / "metadata.csv").write_text("img_filename,y,split,place\n")
    prepare(cli, "waterbirds", data_root, *sources)
    assert left_in(data_root) == ["waterbirds"]


@pytest.mark.parametrize(("args", "fragment"), [
    (["synthetic", "--from", "x"], "nothing to prepare"),
    (["waterbird", "--from", "x"], "did you mean 'waterbirds'"),
    (["waterbirds"], "give --from PATH"),
    (["waterbirds", "--from", "does/not/exist.tar.gz"], "no such file or folder"),
    (["waterbirds", "--url", "ftp://example.org/w.tar.gz"], "only http:// and https://"),
])
def test_user_mistakes_are_one_line(cli, tmp_path, args, fragment):
    assert_refused(cli("data", "prepare", *args, "--data-root", tmp_path / "data", ok=False), fragment)
    assert left_in(tmp_path / "data") == []


def test_no_data_root_is_one_line(cli, monkeypatch, tmp_path):
    monkeypatch.delenv("ROBUSTMTL_DATA", raising=False)
    assert_refused(cli("data", "prepare", "waterbirds", "--from", tmp_path, ok=False), "--data-root")


# --- downloads, from a server on the loopback address ------------------------------------------------


class Served:
    """One file over HTTP on 127.0.0.1 with Range support; `cut_at` makes the next response stop at that byte."""

    def __init__(self, payload: bytes, ranges: bool = True) -> None:
        self.payload = payload
        self.ranges = ranges
        self.cut_at: int | None = None
        self.requests: list[str | None] = []  # the Range header of each request
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                asked = self.headers.get("Range")
                served.requests.append(asked)
                start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if asked and served.ranges else 0
                total = len(served.payload)
                if start >= total and start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                self.send_header("Content-Length", str(total - start))
                self.end_headers()
                end = served.cut_at if served.cut_at is not None else total
                served.cut_at = None
                self.wfile.write(served.payload[start:end])

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/{WATERBIRDS_TOP}.tar.gz"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator:
    started: list[Served] = []

    def start(payload: bytes, ranges: bool = True) -> Served:
        started.append(Served(payload, ranges))
        return started[-1]

    yield start
    for s in started:
        s.close()


def test_interrupted_download_resumes_where_it_stopped(cli, tmp_path, serve):
    _, (archive,) = waterbirds_tar(tmp_path)
    payload = archive.read_bytes()
    server = serve(payload)
    half = len(payload) // 2
    server.cut_at = half
    data_root = tmp_path / "data"
    dest = data_root / "downloads" / archive.name
    result = cli("data", "prepare", "waterbirds", "--url", server.url, "--data-root", data_root, ok=False)
    assert_refused(result, f"stopped at {half} of {len(payload)} bytes; run the same command again to resume")
    assert not dest.exists() and dest.with_name(dest.name + ".part").stat().st_size == half
    assert not (data_root / "waterbirds").exists()
    result = cli("data", "prepare", "waterbirds", "--url", server.url, "--data-root", data_root)
    assert server.requests == [None, f"bytes={half}-"]
    assert dest.read_bytes() == payload and f"prepared waterbirds in {data_root / 'waterbirds'}" in result.stdout
    cli("data", "prepare", "waterbirds", "--url", server.url, "--data-root", data_root)
    assert len(server.requests) == 2  # prepared: nothing downloaded again


def test_download_restarts_when_the_server_ignores_ranges(cli, tmp_path, serve):
    _, (archive,) = waterbirds_tar(tmp_path)
    payload = archive.read_bytes()
    server = serve(payload, ranges=False)
    server.cut_at = 1000
    dest = tmp_path / "saved.tar.gz"
    cli("data", "prepare", "waterbirds", "--url", server.url, "--from", dest, "--data-root", tmp_path / "d", ok=False)
    cli("data", "prepare", "waterbirds", "--url", server.url, "--from", dest, "--data-root", tmp_path / "d")
    assert dest.read_bytes() == payload and (tmp_path / "d" / "waterbirds" / "metadata.csv").is_file()


@pytest.mark.parametrize(("kept", "requests"), [
    ("all", 1),  # killed between the last byte and the rename: the 416 says nothing is left
    ("too much", 2),  # longer than the server's file (another file's bytes): fetched again from the start
])
def test_a_part_file_the_server_has_no_more_bytes_for(cli, tmp_path, serve, kept, requests):
    _, (archive,) = waterbirds_tar(tmp_path)
    payload = archive.read_bytes()
    server = serve(payload)
    dest = tmp_path / "w.tar.gz"
    dest.with_name(dest.name + ".part").write_bytes(payload if kept == "all" else payload + b"junk")
    cli("data", "prepare", "waterbirds", "--url", server.url, "--from", dest, "--data-root", tmp_path / "d")
    assert dest.read_bytes() == payload and len(server.requests) == requests
    assert not dest.with_name(dest.name + ".part").exists()


def test_download_checks_the_checksum(cli, tmp_path, serve):
    _, (archive,) = waterbirds_tar(tmp_path)
    server = serve(archive.read_bytes())
    data_root = tmp_path / "data"
    result = cli("data", "prepare", "waterbirds", "--url", server.url, "--sha256", "ab" * 32, "--data-root",
                 data_root, ok=False)
    assert_refused(result, "SHA-256")
    assert not (data_root / "waterbirds").exists()


def test_unreachable_server_is_one_line(cli, tmp_path, serve):
    server = serve(b"")
    url = server.url
    server.close()
    assert_refused(cli("data", "prepare", "waterbirds", "--url", url, "--data-root", tmp_path, ok=False),
                   "cannot download")
