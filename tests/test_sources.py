"""Source stage: TSV, folder, path list, in-memory list, start/stop blocks, bad arguments."""

from __future__ import annotations

import os

import pytest
from helpers import PATIENCE

from imgfeat import InvalidParameterError
from imgfeat.data.sources import open_source


def ids_paths(src):
    return [(r.id, r.path, r.error) for r in src.records()]


def test_tsv_keeps_ids_and_resolves_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    tsv = tmp_path / "sub" / "list.tsv"
    tsv.write_text("id\tpath\n 0042 \timg/a.jpg\nCaf\u00e9 #2\t/abs/b.png\n\nbroken line\n")
    rows = ids_paths(open_source(str(tsv)))
    assert rows[0] == (" 0042 ", str(tmp_path / "sub" / "img" / "a.jpg"), None)
    assert rows[1] == ("Caf\u00e9 #2", "/abs/b.png", None)
    assert rows[2][0] == "broken line" and rows[2][2].startswith("bad input line 5")
    assert open_source(str(tsv)).count() == 5  # newline count: cheap upper bound used for progress


def test_folder_is_walked_recursively_in_sorted_order(tmp_path):
    for rel in ["b/2.PNG", "a.jpg", "b/1.JPEG", "b/c/3.webp", "notes.txt", "x.Tif"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    ids = [r.id for r in open_source(str(tmp_path)).records()]
    assert ids == ["a.jpg", "x.Tif", "b/1.JPEG", "b/2.PNG", "b/c/3.webp"]


def test_path_list_and_python_list(tmp_path):
    lst = tmp_path / "paths.txt"
    lst.write_text("rel/a.jpg\n/abs/b.jpg\n")
    assert ids_paths(open_source(str(lst))) == [
        ("rel/a.jpg", str(tmp_path / "rel" / "a.jpg"), None), ("/abs/b.jpg", "/abs/b.jpg", None)]
    assert ids_paths(open_source(["x.jpg", ("id7", "y.jpg")])) == [("x.jpg", "x.jpg", None), ("id7", "y.jpg", None)]


def test_start_stop_select_a_block(tmp_path):
    tsv = tmp_path / "l.tsv"
    tsv.write_text("".join(f"{i}\t{i}.jpg\n" for i in range(100)))
    src = open_source(str(tsv), start=10, stop=25)
    assert [r.id for r in src.records()] == [str(i) for i in range(10, 25)]
    assert src.count() == 15
    assert [r.id for r in open_source(str(tsv), start=95).records()] == ["95", "96", "97", "98", "99"]


@pytest.mark.timing
def test_large_tsv_is_read_lazily(tmp_path):
    """The first records arrive while the input is still being written: a FIFO whose writer sends the rest only
    once the reader holds its first records. A source that read the whole input first would get nothing until
    the writer gives up waiting and sends the rest anyway, which the test sees. No verdict depends on speed."""
    import threading

    fifo = tmp_path / "big.tsv"
    os.mkfifo(fifo)
    release, rest_sent = threading.Event(), threading.Event()

    def writer() -> None:
        try:
            with open(fifo, "w") as fh:
                fh.writelines(f"{i}\t{i}.jpg\n" for i in range(10))
                fh.flush()
                release.wait(timeout=60)  # the rest comes after the reader got its first records (or 60 s)
                rest_sent.set()
                fh.writelines(f"{i}\t{i}.jpg\n" for i in range(10, 100_000))
        except BrokenPipeError:  # the reader took its five records and closed the FIFO
            pass

    feeder = threading.Thread(target=writer, daemon=True)
    feeder.start()
    got: list = []
    sent_before_five = []

    def reader() -> None:
        got.extend(r.id for _, r in zip(range(5), open_source(str(fifo), start=2).records()))
        sent_before_five.append(rest_sent.is_set())
        release.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout=PATIENCE)
    feeder.join(timeout=PATIENCE)
    assert sent_before_five == [False], "the source waited for the end of the input before yielding a record"
    assert got == ["2", "3", "4", "5", "6"]


@pytest.mark.parametrize("kwargs,needle", [
    ({"data": "/no/such/input.tsv"}, "'data' parameter"),
    ({"data": "README.md"}, "'data' parameter"),
    ({"data": ".", "start": -1}, "'start' parameter"),
    ({"data": ".", "start": 5, "stop": 2}, "'stop' parameter"),
])
def test_bad_arguments_name_the_parameter(kwargs, needle, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    with pytest.raises(InvalidParameterError, match=needle):
        open_source(**kwargs)


def test_brace_patterns_as_webdataset_writes_them():
    """Issue 30: braceexpand, as webdataset and clip-retrieval use: zero padding, lists, nesting and steps."""
    from imgfeat.data.sources import expand_braces

    assert expand_braces("s/{000008..000011}.tar") == [f"s/0000{i:02d}.tar" for i in range(8, 12)]
    assert expand_braces("{a,b{1..2}}/x.zip") == ["a/x.zip", "b1/x.zip", "b2/x.zip"]
    assert expand_braces("{0..6..3}.tar") == ["0.tar", "3.tar", "6.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
