"""One set of conventions on the command line: gflags boolean spellings, -model, one --flip/--no-flip pair."""
import argparse

import pytest

from vggtool.cli import gflags_booleans, main, normalise_argv


def parser():
    p = argparse.ArgumentParser()
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--no-pool", dest="pool", action="store_false")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--name", default="")
    return p


@pytest.mark.parametrize("argv,shuffle,pool,flip", [
    (["--shuffle=true", "--flip=true"], True, True, True),
    (["--shuffle=false", "--flip=false"], False, True, False),
    (["--noshuffle", "--noflip"], False, True, False),
    (["--shuffle", "--no-flip"], True, True, False),
    (["--no-pool=true"], False, False, False),
    (["--no-pool=0", "--shuffle=1", "--flip=yes"], True, True, True),
])
def test_gflags_boolean_spellings(argv, shuffle, pool, flip):
    p = parser()
    args = p.parse_args(gflags_booleans(normalise_argv(argv), p))
    assert (args.shuffle, args.pool, args.flip) == (shuffle, pool, flip)


def test_values_of_other_flags_are_left_alone():
    p = parser()
    assert gflags_booleans(["--name=true", "--nothing"], p) == ["--name=true", "--nothing"]


def test_subcommands_take_the_gflags_spellings(tmp_path, capsys):
    import cv2
    import numpy as np

    from data_prep.cli import main as data_prep
    from vggtool.data.datum import iterate_records

    names = [f"{i}.png" for i in range(8)]
    for n in names:
        cv2.imwrite(str(tmp_path / n), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "l.txt").write_text("".join(f"{n} 0\n" for n in names))

    def order(*flags):
        db = tmp_path / f"db{len(list(tmp_path.glob('db*')))}"
        assert data_prep(["convert_imageset", *flags, str(tmp_path), str(tmp_path / "l.txt"), str(db)]) == 0
        return [k.decode().split("_", 1)[1] for k, _ in iterate_records(str(db))]

    assert order("--shuffle=false") == names
    assert order("-noshuffle") == names
    shuffled = order("-shuffle=true")  # Caffe's single-dash gflags spelling
    assert sorted(shuffled) == names and shuffled != names
    assert order("--shuffle") == shuffled


@pytest.mark.parametrize("command", ["test", "classify", "extract", "localize", "time", "convolutionalize"])
def test_every_image_command_has_model_and_the_flip_pair(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "--model" in text
    if command in ("test", "classify", "extract", "localize"):
        assert "--flip, --no-flip" in text
