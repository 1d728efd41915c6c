"""vggtool test --heatmaps: the dense class score maps as pictures."""
import cv2
import numpy as np

from eval_helpers import make_model, random_image
from vggtool.vgg import evaluate as ev
from vggtool.cli import main
from vggtool.data.transform import isotropic_resize
from vggtool.vgg.heatmaps import class_map, picture_name


def test_class_map_averages_to_the_dense_posterior(tmp_path, rng):
    net, weights = make_model(tmp_path)
    e = ev.Evaluator(net, weights, scales=[48], mode="dense")
    image = random_image(rng, 48, 64)
    post = e.dense(isotropic_resize(image, 48))
    maps = [class_map(e, image, 48, c) for c in range(len(post))]
    assert maps[0].ndim == 2 and maps[0].size > 1  # a map, not a single location
    np.testing.assert_allclose([m.mean() for m in maps], post, atol=1e-6)
    np.testing.assert_allclose(np.sum(maps, axis=0), 1, atol=1e-5)  # a posterior at each location


def test_test_writes_heatmaps(tmp_path, rng, capsys):
    net, weights = make_model(tmp_path)
    root = tmp_path / "val"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    cv2.imwrite(str(root / "a" / "one.png"), random_image(rng, 40, 52))
    cv2.imwrite(str(root / "b" / "two.png"), random_image(rng, 36, 36))
    out = tmp_path / "maps"
    assert main(["test", "--net", net, "--weights", weights, "--data", str(root), "--scales", "32,40",
                 "--heatmaps", str(out)]) == 0
    assert "wrote 2 heat map(s)" in capsys.readouterr().out
    one = cv2.imread(str(out / picture_name("a/one.png")))
    assert one.shape == (40, 2 * 52, 3)  # true class | predicted class, each the image's size
    two = cv2.imread(str(out / "b__two.png"))
    assert two.shape == (36, 72, 3)
    assert one[:, :52].std() > 0
