"""The one list grammar (vggtool.data.imagelist) behind every dataset reader: the edge cases on which the
three former parsers (ImageData's, the box list's, the image sets') disagreed, each pinned."""
import numpy as np
import pytest

from vggtool.data.imagelist import (list_has_boxes, read_box_list, read_image_list, read_image_list_lines,
                                    read_labelled_list, read_names)
from vggtool.data.imagesets import parse_classes
from vggtool.errors import VggtoolError


def write(tmp_path, text, name="list.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def test_a_path_keeps_its_inner_spaces_in_every_kind_of_list(tmp_path):
    """Caffe splits at the last space, so 'my  photo.png' (two spaces) names that file; the box and
    multi-label readers used to join the fields with one space."""
    assert read_image_list(write(tmp_path, "my  photo.png 3\n")) == [("my  photo.png", 3)]
    name, label, boxes = read_box_list(write(tmp_path, "my  photo.png 3 1 2 5 6\n"))[0]
    assert (name, label) == ("my  photo.png", 3)
    np.testing.assert_array_equal(boxes, [[1, 2, 5, 6]])
    assert read_labelled_list(write(tmp_path, "my  photo.png 3 1\n")) == [("my  photo.png", (3, 1), 1)]


def test_comments_and_blank_lines_are_skipped_by_every_reader(tmp_path):
    text = "# a comment\n\na.png 1\n   \n# b.png 2\nc.png 0\n"
    assert read_image_list_lines(write(tmp_path, text)) == [("a.png", 1, 3), ("c.png", 0, 6)]
    assert [(n, l) for n, l, _ in read_box_list(write(tmp_path, text))] == [("a.png", 1), ("c.png", 0)]
    assert read_labelled_list(write(tmp_path, text)) == [("a.png", (1,), 3), ("c.png", (0,), 6)]
    assert read_names(write(tmp_path, "# classes\ncat\ndog\n")) == ["cat", "dog"]
    assert parse_classes(write(tmp_path, "# classes\ncat\ndog\n")) == ["cat", "dog"]


def test_any_whitespace_separates_the_label(tmp_path):
    """A tab before the label: the one-label reader used to split at spaces only and call it unlabelled."""
    assert read_image_list(write(tmp_path, "a.png\t3\nb c.png \t 4  \n")) == [("a.png", 3), ("b c.png", 4)]
    assert read_image_list_lines(write(tmp_path, "a.png\t3\n"), require_label=False) == [("a.png", 3, 1)]


@pytest.mark.parametrize("label", ["1_0", "٣", "3.0", "x"])
def test_a_label_is_ascii_digits_as_atoi_reads_them(tmp_path, label):
    """Python's int() also takes '1_0' (10) and other scripts' digits; Caffe's labels are C integers."""
    path = write(tmp_path, f"a.png 1\nb.png {label}\n")
    with pytest.raises(VggtoolError, match=rf"list.txt:2: label '{label}' is not an integer"):
        read_image_list(path)
    if label == "3.0":  # a box list reads a non-number as part of the path (then 4 is the label, no box)
        with pytest.raises(VggtoolError, match=r"list.txt:2: "):
            read_box_list(write(tmp_path, f"a.png 1\nb.png {label} 1 2 3 4\n"))
    assert read_image_list(write(tmp_path, "a.png -1\nb.png +2\n")) == [("a.png", -1), ("b.png", 2)]


def test_a_multi_label_list_reads_only_ascii_integers_as_labels(tmp_path):
    assert read_labelled_list(write(tmp_path, "a 1_0.png\nb.png 2 ٣\n")) == [("a 1_0.png", (), 1),
                                                                         ("b.png 2 ٣", (), 2)]
    with pytest.raises(VggtoolError, match=r"list.txt:1: labels must be class indices >= 0"):
        read_labelled_list(write(tmp_path, "a.png 2 -1\n"))


def test_box_coordinates_are_ascii_numbers(tmp_path):
    """float() takes '1_0' too; a box list is C numbers, so '1_0' ends the numbers (then no box)."""
    name, label, boxes = read_box_list(write(tmp_path, "b.png 1 1_0 1 5 6\n"))[0]
    assert (name, label, boxes.shape) == ("b.png 1 1_0 1 5", 6, (0, 4))


@pytest.mark.parametrize("box", ["nan 1 5 6", "0 1 inf 6"])
def test_a_box_must_be_finite(tmp_path, box):
    with pytest.raises(VggtoolError, match=r"list.txt:2: box coordinates must be finite"):
        read_box_list(write(tmp_path, f"a.png 0 1 1 5 5\nb.png 1 {box}\n"))


def test_box_lists_are_detected_and_read_with_the_same_fields(tmp_path):
    path = write(tmp_path, "a.png 0\nb.png 1 0 0 4 4 1 1 3 3\n")
    assert list_has_boxes(path) and not list_has_boxes(write(tmp_path, "a.png 0\n# c 1 0 0 4 4\n", "b.txt"))
    assert not list_has_boxes(str(tmp_path / "missing.txt"))
    rows = read_box_list(path)
    assert [(n, l, b.shape) for n, l, b in rows] == [("a.png", 0, (0, 4)), ("b.png", 1, (2, 4))]
    with pytest.raises(VggtoolError, match=r"list.txt:1: box \[4.0, 0.0, 4.0, 4.0\] is empty"):
        read_box_list(write(tmp_path, "a.png 0 4 0 4 4\n"))


def test_a_binary_file_is_an_error_naming_file_and_line(tmp_path):
    path = write(tmp_path, b"a.png 1\n\xff\xfe\x00 2\n")
    for read in (read_image_list, read_box_list, read_labelled_list, read_names):
        with pytest.raises(VggtoolError, match=r"list.txt:2: not UTF-8 text"):
            read(path)


def test_names_files(tmp_path):
    words = write(tmp_path, "n01440764 tench, Tinca tinca\nn01443537 goldfish\n")
    assert read_names(words) == ["n01440764 tench, Tinca tinca", "n01443537 goldfish"]
    assert read_names(words, first_field=True) == ["n01440764", "n01443537"]
    with pytest.raises(VggtoolError, match=r"labels.txt:3: the name 'cat' appears twice \(first on line 1\)"):
        read_names(write(tmp_path, "cat\ndog\ncat\n", "labels.txt"))
    with pytest.raises(VggtoolError, match=r"labels file not found: .*nothere.txt"):
        read_names(str(tmp_path / "nothere.txt"))
    assert read_names(write(tmp_path, "1\n1\n"), distinct=False) == ["1", "1"]
