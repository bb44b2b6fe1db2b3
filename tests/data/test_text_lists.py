"""Files of image paths, captions and words (`clip_cir.data.text_lists`): what they read, in
which order, and a one-line error naming the file (and line) for each kind of bad file."""

from __future__ import annotations

import pytest
from PIL import Image

from clip_cir.data.images import ImageCheck
from clip_cir.data.text_lists import read_caption_file, read_image_list, read_word_list
from clip_cir.errors import CIRError


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


def test_an_image_list_reads_relative_and_absolute_paths_in_order_each_once(tmp_path):
    a = _image(tmp_path / "photos" / "a.png")
    b = _image(tmp_path / "elsewhere" / "b.jpg")
    listing = tmp_path / "lists" / "images.txt"
    listing.parent.mkdir()
    listing.write_text(f"\n../photos/a.png\n  {b}  \n\n../photos/a.png\n", encoding="utf-8")
    assert read_image_list(listing) == [a, b]  # relative to the list's folder, normalised


def test_an_image_list_with_a_missing_image_is_one_line_or_skips_it(tmp_path):
    _image(tmp_path / "a.png")
    listing = tmp_path / "images.txt"
    listing.write_text("a.png\nnot-there.png\n", encoding="utf-8")
    with pytest.raises(CIRError, match=r"not-there.png: image 'not-there.png' listed in images.txt is missing on disk"):
        read_image_list(listing)
    check = ImageCheck.for_purpose("training", skip=True)
    assert read_image_list(listing, check) == [tmp_path / "a.png"]
    assert list(check.skipped) == ["not-there.png"]
    listing.write_text("\n\n", encoding="utf-8")
    with pytest.raises(CIRError, match=r"images.txt: no image paths \(one path a line\)"):
        read_image_list(listing)
    with pytest.raises(CIRError, match=r"absent.txt: image list not found"):
        read_image_list(tmp_path / "absent.txt")


def test_a_caption_file_is_one_caption_a_line_or_a_tables_column(tmp_path):
    lines = tmp_path / "captions.txt"
    lines.write_text("a red car\n\n  two dogs  \na red car\n", encoding="utf-8")
    assert read_caption_file(lines) == ["a red car", "two dogs"]
    table = tmp_path / "captions.tsv"
    table.write_text("file\ttitle\nx.png\ta blue star\ny.png\ta, comma\n", encoding="utf-8")
    assert read_caption_file(table, "title") == ["a blue star", "a, comma"]
    comma = tmp_path / "captions.csv"
    comma.write_text('id,text\n1,"a, quoted caption"\n2,plain\n', encoding="utf-8")
    assert read_caption_file(comma, "text") == ["a, quoted caption", "plain"]


@pytest.mark.parametrize("name, content, column, message", [
    ("c.tsv", "file\ttitle\nx\tok\n", None, r"c.tsv: a table of captions needs --caption-column NAME \(columns: "
                                             r"file, title\)"),
    ("c.tsv", "file\ttitle\nx\tok\n", "text", r"c.tsv: no column 'text' \(columns: file, title\)"),
    ("c.csv", "id,text\n1,fine\n2,\n", "text", r"c.csv:3: empty caption in column 'text'"),
    ("c.txt", "a caption\n", "text", r"c.txt: --caption-column reads a .csv or .tsv file"),
    ("c.txt", "\n \n", None, r"c.txt: no captions"),
    ("c.csv", "text\n", "text", r"c.csv: no captions"),
])
def test_bad_caption_files_are_one_line(tmp_path, name, content, column, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CIRError, match=message):
        read_caption_file(path, column)


def test_a_caption_file_that_is_not_utf8_or_absent_is_one_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(CIRError, match=r"c.txt: not a UTF-8 text file \(invalid continuation byte at byte 3\)"):
        read_caption_file(path)
    with pytest.raises(CIRError, match=r"nope.txt: caption file not found"):
        read_caption_file(tmp_path / "nope.txt")


def test_a_word_list_is_one_word_a_line_each_once(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("dog\n\nred car\ndog\n", encoding="utf-8")
    assert read_word_list(path) == ["dog", "red car"]
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(CIRError, match=r"words.txt: no words \(one a line\)"):
        read_word_list(path, "concept list")
