"""The build cache as an attack surface: nothing in it can run code, a planted or corrupt entry is
never served, an unsafe directory is not used, and the key covers exactly the bytes the build read."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
from test_hostile_specs import GOOD, one_line, run_main, run_process, snapshot, watchdog  # noqa: F401

from effspec import cache, loader
from effspec.pipeline import Compiled, build

pytestmark = pytest.mark.usefixtures("watchdog")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "good.yaml").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EFFSPEC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def key_of(spec: str) -> str:
    resolved = loader.resolve(spec)
    return cache.key_for(resolved.display, resolved.sources)


def entry_path(spec: str) -> Path:
    directory = cache.cache_dir()
    assert directory is not None
    return directory / f"{key_of(spec)}.json"


def compile_ok(capsys: pytest.CaptureFixture[str], spec: str = "good.yaml") -> tuple[str, str]:
    """Compile into out/: exit 0, and nothing changed outside out/ and the cache directory."""
    work = Path.cwd()
    before = snapshot(work, skip=("out", "cache"))
    code, out, err = run_main(["compile", spec, "--backend", "torch", "-o", "out"], capsys)
    assert code == 0, err
    assert snapshot(work, skip=("out", "cache")) == before
    assert (work / "out" / "torch" / "tiny" / "model.py").is_file()
    return out, err


def served_from_cache(monkeypatch: pytest.MonkeyPatch, spec: str) -> Compiled:
    """build(spec) with validation disabled: only a cache hit can succeed."""

    def refuse(resolved: object) -> None:
        raise AssertionError("not served from the cache")

    with monkeypatch.context() as patch:
        patch.setattr(loader, "validate", refuse)
        return build(spec)


def test_entries_are_json_in_a_private_directory(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0)
    try:
        compile_ok(capsys)
    finally:
        os.umask(old)
    directory = work / "cache"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (entry,) = directory.iterdir()
    assert entry.suffix == ".json" and json.loads(entry.read_text())["name"] == "tiny"
    assert not (directory / "templates").exists(), "no template bytecode cache"


def test_a_hit_is_served_without_validation(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build("good.yaml")
    assert served_from_cache(monkeypatch, "good.yaml") == first


def test_a_planted_pickle_never_runs(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = work / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, ...]:
            return (open, (str(marker), "w"))

    directory = work / "cache"
    directory.mkdir(mode=0o700)
    key = key_of("good.yaml")
    for name in (f"{key}.pickle", f"{key}.json", "templates/__jinja2_model.cache"):
        (directory / name).parent.mkdir(exist_ok=True, mode=0o700)
        (directory / name).write_bytes(pickle.dumps(Payload()))
    out, err = compile_ok(capsys)
    assert not marker.exists(), "a cache file ran code"
    assert err == "" and out == "wrote out/torch/tiny\n"


def test_a_planted_entry_for_another_spec_is_refused(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An entry built from B7, renamed and re-keyed as good.yaml's, must not make us write B7."""
    for name in ("efficientnet-b0", "efficientnet-b7"):
        (work / f"{name}.yaml").write_text((ROOT / "specs" / f"{name}.yaml").read_text())
    (work / "b7.yaml").write_text((ROOT / "specs" / "efficientnet-b7.yaml").read_text())
    build("b7.yaml")
    entry = json.loads(entry_path("b7.yaml").read_text())
    key = key_of("good.yaml")
    entry.update(key=key, display="good.yaml", name="tiny")
    entry["shared"].update(name="tiny", spec_path="good.yaml")  # the model, held by value.model and value.report
    entry_path("good.yaml").write_text(json.dumps(entry))
    compile_ok(capsys)
    written = (work / "out" / "torch" / "tiny" / "model.py").read_text()
    assert "efficientnet-b7" not in written
    assert len(build("good.yaml").model.stages) == 1  # the one-stage spec, rebuilt


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"null", b"[]", b'{"format": 2}', b"\xff\xfe", b"[" * 100_000, b'{"format": 1, "value": {}}'],
    ids=["empty", "truncated", "null", "list", "no-key", "binary", "deep", "old-format"],
)
def test_a_corrupt_entry_is_rebuilt(work: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    (work / "cache").mkdir(mode=0o700)
    path = entry_path("good.yaml")
    path.write_bytes(content)
    out, err = compile_ok(capsys)
    assert err == ""
    assert json.loads(path.read_text())["name"] == "tiny"  # rewritten by the rebuild


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.update(key="0" * 64),
        lambda e: e.update(display="other.yaml"),
        lambda e: e["shared"].update(resolution="224"),
        lambda e: e["shared"].update(width=float("inf")),
        lambda e: e["shared"].update(extra_field=1),
        lambda e: e["shared"].pop("stages"),
        lambda e: e["shared"]["stages"][0].update(kind="resnet"),
        lambda e: e["shared"]["stages"][0]["blocks"][0].update(kernel=5),
        lambda e: e["shared"]["head"].update(num_classes=True),
    ],
    ids=["key", "display", "str-for-int", "inf", "extra-field", "missing-field", "bad-literal", "kernel", "bool"],
)
def test_a_tampered_entry_is_not_served(work: Path, capsys: pytest.CaptureFixture[str], mutate: object) -> None:
    first = build("good.yaml")
    path = entry_path("good.yaml")
    honest = json.loads(path.read_text())
    entry = json.loads(path.read_text())
    mutate(entry)  # type: ignore[operator]
    path.write_text(json.dumps(entry))
    assert build("good.yaml") == first  # rebuilt: equal to the honest build
    assert json.loads(path.read_text()) == honest  # and the tampered entry overwritten


def test_an_entry_must_share_one_model(work: Path) -> None:
    """value.model spelled out instead of shared: the report would describe another model. Refused."""
    first = build("good.yaml")
    path = entry_path("good.yaml")
    entry = json.loads(path.read_text())
    entry["value"]["model"] = entry["shared"]
    path.write_text(json.dumps(entry))
    assert build("good.yaml") == first
    assert json.loads(path.read_text())["value"]["model"] == {"$shared": True}


def test_symlinked_fifo_and_huge_entries_are_ignored(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build("good.yaml")
    path = entry_path("good.yaml")
    honest = path.read_bytes()
    elsewhere = work / "elsewhere.json"
    elsewhere.write_bytes(honest)
    path.unlink()
    os.symlink(elsewhere, path)
    assert build("good.yaml") == first and not path.is_symlink()
    path.unlink()
    os.mkfifo(path)
    assert build("good.yaml") == first and path.is_file()  # no hang on the FIFO, replaced by a file
    with open(path, "wb") as handle:
        handle.truncate(32 << 20)
    assert build("good.yaml") == first and path.stat().st_size < (1 << 20)
    assert served_from_cache(monkeypatch, "good.yaml") == first


def test_a_world_writable_cache_is_not_used(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = work / "cache"
    directory.mkdir()
    directory.chmod(0o777)
    before = snapshot(directory)
    out, err = compile_ok(capsys)
    assert (
        one_line(err)
        == f"effspec: note: not using the build cache {directory}: writable by group or others (chmod 700 it to use it)"
    )
    assert snapshot(directory) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_cache_owned_by_another_user_is_not_used(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = work / "cache"
    directory.mkdir(mode=0o700)
    os.chown(directory, 12345, 12345)
    out, err = compile_ok(capsys)
    assert one_line(err).endswith("owned by another user")
    assert list(directory.iterdir()) == []


def test_a_cache_path_that_is_a_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "cache").write_text("not a directory")
    out, err = compile_ok(capsys)
    assert (work / "cache").read_text() == "not a directory"
    assert err == "" or one_line(err).endswith("not a directory")


def test_cache_off_creates_nothing(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EFFSPEC_CACHE_DIR", "off")
    compile_ok(capsys)
    assert not (work / "cache").exists()


def test_each_file_is_read_once(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (work / "child.yaml").write_text("extends: good.yaml\nname: child\n")
    reads: list[str] = []
    real = loader.read_source

    def counting(path: Path, file: str) -> bytes:
        reads.append(file)
        return real(path, file)

    monkeypatch.setattr(loader, "read_source", counting)
    build("child.yaml")
    assert reads == ["child.yaml", "good.yaml"]


def test_an_edit_during_the_build_cannot_poison_the_cache(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is computed from the bytes parsed, so an edit right after the read is a different key."""
    real = loader.read_source
    edited = GOOD.replace("channels: 16", "channels: 24")

    def read_then_edit(path: Path, file: str) -> bytes:
        data = real(path, file)
        Path(path).write_text(edited)  # the user saves a new version mid-build
        return data

    with monkeypatch.context() as patch:
        patch.setattr(loader, "read_source", read_then_edit)
        old = build("good.yaml")
    assert old.model.stages[0].blocks[0].out_channels == 16
    new = build("good.yaml")  # the edited bytes: a miss, never the old entry
    assert new.model.stages[0].blocks[0].out_channels == 24
    (work / "good.yaml").write_text(GOOD)
    assert served_from_cache(monkeypatch, "good.yaml") == old


def test_the_cache_in_a_real_process(work: Path) -> None:
    """Uncached, then cached: identical output, and the cached run writes nothing new to the cache."""
    env = {"EFFSPEC_CACHE_DIR": str(work / "cache")}
    first = run_process(["info", "good.yaml", "--json"], work, env=env)
    entries = sorted((work / "cache").iterdir())
    second = run_process(["info", "good.yaml", "--json"], work, env=env)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout and second.stderr == ""
    assert sorted((work / "cache").iterdir()) == entries and len(entries) == 1
