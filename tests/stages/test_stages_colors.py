"""Colour names of subjects against what a person calls a colour: named patches and masked regions."""

import numpy as np
import pytest

from scone_data.stages.colors import COLOR_NAMES, color_attributes, eroded, pixel_color_names

# Hand-written ground truth: sRGB values of CSS and xkcd colour-survey names, with the basic name a
# person uses for each (navy is blue, olive is green, tan is beige, maroon is red ...).
PATCHES = [
    ((255, 0, 0), "red"),  # CSS red
    ((220, 20, 60), "red"),  # crimson
    ((128, 0, 0), "red"),  # maroon
    ((139, 0, 15), "red"),  # xkcd crimson
    ((178, 34, 34), "red"),  # firebrick
    ((255, 99, 71), "red"),  # tomato
    ((255, 165, 0), "orange"),  # CSS orange
    ((249, 115, 6), "orange"),  # xkcd orange
    ((255, 140, 0), "orange"),  # dark orange
    ((253, 60, 6), "orange"),  # xkcd red orange: orange once light
    ((232, 90, 30), "orange"),  # an "international orange" spacesuit in daylight
    ((255, 255, 0), "yellow"),
    ((255, 215, 0), "yellow"),  # gold
    ((206, 179, 1), "yellow"),  # mustard
    ((0, 128, 0), "green"),
    ((128, 128, 0), "green"),  # olive
    ((34, 139, 34), "green"),  # forest green
    ((46, 139, 87), "green"),  # sea green
    ((0, 0, 255), "blue"),
    ((0, 0, 128), "blue"),  # navy
    ((1, 21, 62), "blue"),  # xkcd navy
    ((65, 105, 225), "blue"),  # royal blue
    ((135, 206, 235), "blue"),  # sky blue
    ((0, 128, 128), "blue"),  # teal
    ((128, 0, 128), "purple"),
    ((75, 0, 130), "purple"),  # indigo
    ((238, 130, 238), "purple"),  # violet
    ((147, 112, 219), "purple"),  # medium purple (CIELAB puts it at pure blue's hue angle)
    ((255, 192, 203), "pink"),
    ((255, 105, 180), "pink"),  # hot pink
    ((250, 128, 114), "pink"),  # salmon
    ((101, 55, 0), "brown"),  # xkcd brown
    ((139, 69, 19), "brown"),  # saddle brown
    ((160, 82, 45), "brown"),  # sienna
    ((173, 129, 80), "brown"),  # xkcd light brown
    ((52, 28, 2), "brown"),  # xkcd dark brown
    ((245, 245, 220), "beige"),  # CSS beige
    ((230, 218, 166), "beige"),  # xkcd beige
    ((210, 180, 140), "beige"),  # tan
    ((200, 170, 130), "beige"),  # a camel coat
    ((255, 255, 194), "beige"),  # cream
    ((255, 255, 255), "white"),
    ((245, 245, 245), "white"),  # white smoke
    ((230, 230, 250), "white"),  # lavender: too faint a tint to name
    ((0, 0, 0), "black"),
    ((20, 20, 22), "black"),
    ((128, 128, 128), "gray"),
    ((192, 192, 192), "gray"),  # silver
    ((54, 55, 55), "gray"),  # xkcd dark grey
    ((112, 128, 144), "gray"),  # slate gray
]


@pytest.mark.parametrize("rgb,name", PATCHES, ids=[f"{n}-{r}" for r, n in PATCHES])
def test_named_patch(rgb, name):
    got = COLOR_NAMES[int(pixel_color_names(np.array([rgb], np.uint8))[0])]
    assert got == name


def test_shares_dominant_name_and_mixed():
    img = np.zeros((60, 60, 3), np.uint8)
    img[:, :, :] = (30, 60, 200)  # blue
    img[:, 40:] = (240, 130, 20)  # orange: a third of the square
    mask = np.ones((60, 60), bool)
    color, colors = color_attributes(img, mask)
    assert color == "blue"
    assert [c["name"] for c in colors] == ["blue", "orange"]
    assert colors[0]["share"] > colors[1]["share"] and round(sum(c["share"] for c in colors), 3) == 1.0
    assert all(c["share"] == round(c["share"], 3) for c in colors)
    img[0::3], img[1::3], img[2::3] = (30, 60, 200), (240, 130, 20), (250, 250, 250)  # stripes
    color, colors = color_attributes(img, mask)
    assert color == "mixed" and {c["name"] for c in colors} == {"blue", "orange", "white"}


def test_names_below_five_percent_are_left_out():
    img = np.full((50, 50, 3), (200, 20, 20), np.uint8)
    img[20:23, 20:23] = (20, 200, 20)  # 9 px of green: 0.4%
    # shares stay shares of all the pixels read: the 0.5% of green is left out, not given to red
    assert color_attributes(img, np.ones((50, 50), bool)) == ("red", [{"name": "red", "share": 0.995}])


def test_edge_pixels_do_not_vote():
    """A beige subject whose mask carries a rim of the wooden table it stands on is still beige."""
    img = np.full((100, 100, 3), (120, 70, 30), np.uint8)  # brown table
    img[20:80, 20:80] = (215, 190, 150)  # beige object
    mask = np.zeros((100, 100), bool)
    mask[16:84, 16:84] = True  # the mask bleeds 4 px (6%) into the table all round: 22% of its pixels
    assert color_attributes(img, mask)[0] == "beige"
    assert {c["name"] for c in color_attributes(img, mask)[1]} == {"beige"}


def test_thin_mask_falls_back_to_the_plain_mask():
    mask = np.zeros((40, 200), bool)
    mask[20, 10:190] = True  # a one-pixel wire: erosion would leave nothing
    assert np.array_equal(eroded(mask), mask)
    img = np.zeros((40, 200, 3), np.uint8)
    img[20] = (30, 160, 40)
    assert color_attributes(img, mask)[0] == "green"
