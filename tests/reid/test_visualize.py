import numpy as np
import pytest
from PIL import Image

from sharpattn.reid.report.visualize import COLOURS, HEADER, plot_ranked_lists


def frame_colours_along(img, y):
    """Colours of the frames met along row y, one per picture (a frame is met twice)."""
    row = [tuple(p) for p in np.asarray(img)[y]]
    runs = [c for k, c in enumerate(row) if k == 0 or c != row[k - 1]]
    frames = [c for c in runs if c in COLOURS.values()]
    return frames[::2]


def test_ranked_list_picture_marks_matches(tmp_path):
    def item(name, pid, cam):
        path = tmp_path / name
        Image.new("RGB", (16, 32), (128, 128, 128)).save(path)
        return (str(path), pid, cam)

    query = [item("q.png", 1, 0), item("q2.png", 2, 1)]
    gallery = [item("g0.png", 1, 0),   # same identity and camera: hidden
               item("g1.png", 2, 1),
               item("g2.png", 1, 1),
               item("g3.png", -1, 1),  # junk: hidden
               item("g4.png", 0, 1)]   # a distractor (Market-1501's identity 0)
    d = np.array([[0.1, 0.2, 0.3, 0.05, 0.4],
                  [0.5, 0.9, 0.1, 0.2, 0.3]])
    out = plot_ranked_lists(d, query, gallery, tmp_path / "out" / "ranks.png", topk=3,
                            query_indices=[0, 1], cell=(32, 16), title="san on synthetic", distractor_pid=0)
    img = Image.open(out).convert("RGB")
    row_h = (img.height - HEADER) // 2
    y0, y1 = HEADER + 6 + 16, HEADER + row_h + 6 + 16  # middle of each row's pictures
    q, ok, bad, dis = COLOURS["query"], COLOURS["correct"], COLOURS["wrong"], COLOURS["distractor"]
    # query 0 (id 1, cam 0): g1 wrong, g2 right, g4 a distractor
    assert frame_colours_along(img, y0) == [q, bad, ok, dis]
    # query 1 (id 2, cam 1): g2 (id 1) wrong, g4 a distractor, then g0 (id 1) wrong; g1 is id 2
    # in the query's own camera, so it is hidden
    assert frame_colours_along(img, y1) == [q, bad, dis, bad]
    # the legend names the four colours, in order, above the rows
    assert legend_swatches(img) == [q, ok, bad, dis]


def legend_swatches(img, y=28):
    """Colours of the legend's swatches (runs of 10+ pixels; text pixels make shorter runs)."""
    row = [tuple(int(v) for v in p) for p in np.asarray(img)[y]]
    runs, start = [], 0
    for k in range(1, len(row) + 1):
        if k == len(row) or row[k] != row[start]:
            runs.append((row[start], k - start))
            start = k
    return [c for c, n in runs if n >= 10 and c in COLOURS.values()]


def test_shape_mismatch_is_reported(tmp_path):
    with pytest.raises(ValueError, match="does not match 1 queries x 2 gallery"):
        plot_ranked_lists(np.zeros((1, 3)), [("a", 1, 0)], [("b", 1, 1), ("c", 2, 1)], tmp_path / "x.png")
