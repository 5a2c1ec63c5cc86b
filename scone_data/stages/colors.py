"""Colour names of a subject, as a person would say them: CIELAB lightness, chroma and hue angle.

Each pixel of the subject's *eroded* mask gets one of :data:`COLOR_NAMES`; the subject's attributes
are the shares of those names (``colors``) and the dominant one (``color``, ``"mixed"`` when no name
covers :data:`DOMINANT_SHARE` of the pixels). The mask is eroded first (:data:`ERODE_FRAC` of its
box's longer side) so that edge pixels, where segmentation masks carry background and the
neighbouring object, do not vote; a mask that erosion would (nearly) erase is read whole.

Pixels are read in CIE L*a*b* (D65, OpenCV on float RGB in [0, 1]; L* in 0..100) as lightness L*,
chroma C* = |(a*, b*)| and hue angle h = atan2(b*, a*) in degrees. The thresholds were set on
named colour patches (CSS and xkcd colour-survey RGBs, see the tests) and checked on the demo
photos' cut-outs:

- achromatic (C* < :data:`ACHROMATIC_C`, or a faint tint C* < :data:`TINT_C` that is not beige,
  or near-black L* < :data:`BLACK_L` with C* < :data:`TINT_C` + 5): black below L* :data:`BLACK_L`, white from
  L* :data:`WHITE_L`, gray between. Photos of white objects rarely reach L* 90, hence 80.
- beige: warm hue (:data:`WARM_HUE`), light (L* >= :data:`LIGHT_L`), low chroma (C* < :data:`BEIGE_MAX_C`):
  tan, cream, khaki, a camel coat.
- brown: warm hue and dark (L* < :data:`BROWN_L`, or L* < :data:`LIGHT_L` with low chroma); a vivid
  dark orange (C* >= :data:`VIVID_C`) stays orange.
- hue angles for the rest (CIELAB's, not HSV's: pure red is at 40 deg, orange 56-73, yellow 103, green
  136, blue 306 with navy at 291-306, purple from 309): see :data:`HUES`. Dark yellow-greens (olive)
  are green; light reds and magentas are pink.
"""

from __future__ import annotations

import numpy as np

COLOR_NAMES = (
    "black",
    "white",
    "gray",
    "brown",
    "beige",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
)
# A colour name is a subject's ``color`` only when it covers at least this share of the eroded mask:
# what a person sees first. Below it the subject is "mixed" (stripes, prints, two-tone). 0.6, not 0.5:
# on the demo a white espresso cup seen from above is 52% crema ("orange") and a lattice tower 58%
# the sky between its girders ("blue"); neither is what a person calls them.
DOMINANT_SHARE = 0.6
# Names covering less than this share are left out of ``colors``: a few stray pixels are not a colour
# of the subject.
MIN_SHARE = 0.05
# Erosion radius as a fraction of the longer side of the mask's box: 5% of a 300 px subject is 15 px,
# more than the halo GrabCut and SAM leave around an object (the tests' 4 px rim round a 68 px mask needs
# a radius of 4: 5%, where 3% would leave a ring of it voting).
ERODE_FRAC = 0.05
# When erosion leaves fewer than this share of the mask's pixels (thin objects: spoons, poles, straps),
# the plain mask is read instead.
MIN_ERODED_SHARE = 0.2
# At most this many pixels are named (a fixed-stride subsample, deterministic): 20,000 samples put a
# share within about 1% while a 12 MP mask would cost a full Lab pass.
MAX_PIXELS = 20_000

ACHROMATIC_C = 10.0  # C* below this reads as black/white/gray whatever the hue (CSS grey/silver: C* < 3)
TINT_C = 13.0  # C* below this is a tint too faint to name a hue (lavender C* 10); only beige is named (light blue: 16)
BLACK_L = 22.0  # achromatic L* below this is black (xkcd "dark grey" is L* 23)
WHITE_L = 80.0  # achromatic L* from this is white (silver L* 78 stays gray)
WARM_HUE = (40.0, 110.0)  # h of orange, tan, yellow: where beige and brown live
LIGHT_L = 60.0  # beige needs at least this L*; below it a low-chroma warm colour is brown
BEIGE_MAX_C = 40.0  # beige up to this C* (xkcd tan 38, beige 27); more chroma is orange or yellow
BROWN_L = 50.0  # a warm hue darker than this is brown (sienna L* 44, xkcd brown 28)...
VIVID_C = 70.0  # ... unless this vivid (dark orange C* 73, burnt orange 72): that stays orange
YELLOW_L = 60.0  # yellow hues darker than this are olive (green) or brown: dark yellow is not "yellow"
# Hue-angle ranges [lo, hi) in degrees for chromatic pixels not named beige/brown above; first match.
HUES = (
    ("pink", 340.0, 360.0),  # magenta, hot pink (dark ones: purple, see pixel_color_names)
    ("pink", 0.0, 20.0),  # pink, mauve (dark ones: red: burgundy, maroon)
    ("red", 20.0, 45.0),  # crimson 25-34, red 40 (light ones: pink, e.g. salmon); ends at RED_ORANGE_H
    ("orange", 45.0, 75.0),  # xkcd orange 56, CSS orange 73, dark orange 53-64
    ("yellow", 75.0, 110.0),  # gold 90, mustard 94, yellow 103
    ("green", 110.0, 180.0),  # green 136, sea green 154, aqua 177
    ("blue", 180.0, 309.0),  # turquoise 181-185, teal 184-196, sky 235-264, navy 291-306, blue 306
    ("purple", 309.0, 340.0),  # indigo 311-314, lilac 310, purple 320-328, violet 316-327
)
# Red ends and orange begins at hue 48 deg for L* <= 40 and at 42 deg for L* >= 55 (linear between):
# orange is the lighter of the two. A red saucer in shade (L* 36, h 42) and vermilion (L* 53, h 42)
# stay red; a spacesuit in "international orange" (L* 55, h 44) and xkcd "red orange" (L* 56, h 44)
# are orange; tomato (L* 62, h 39) stays red.
RED_ORANGE_H = (48.0, 42.0)
RED_ORANGE_L = (40.0, 55.0)  # the L* between which that hue moves from 48 to 42 deg
DARK_PINK_L = 35.0  # pinks (340-360 deg) darker than this are purple (plum)
DARK_RED_L = 45.0  # pinks (0-20 deg) darker than this are red (burgundy L* 19, light burgundy 42)
LIGHT_RED_L = 65.0  # reds at least this light and below VIVID_C are pink (salmon, light coral)
GRAY_RED_C = 25.0  # reds duller than this are pink when light (rosy brown), brown when dark ...
GRAY_RED_L = 50.0  # ... light meaning L* at least this
# CIELAB bends light blues toward purple: from L* 50 hues from this angle on are purple (medium purple
# 306 at L* 55), below L* 50 they stay blue (pure blue 306 at L* 32, slate blue 302)
LIGHT_PURPLE_H = 304.0
LIGHT_PURPLE_L = 50.0


def lch(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) uint8 RGB -> L* (0..100), C* (>= 0) and hue angle (degrees, 0..360), each (N,) float32."""
    import cv2

    lab = cv2.cvtColor(rgb.reshape(-1, 1, 3).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(-1, 3)
    a, b = lab[:, 1], lab[:, 2]
    return lab[:, 0], np.hypot(a, b), np.degrees(np.arctan2(b, a)) % 360.0


def pixel_color_names(rgb: np.ndarray) -> np.ndarray:
    """Colour name index (into :data:`COLOR_NAMES`) of each pixel. ``rgb``: (N, 3) uint8 RGB; -> (N,) int."""
    L, C, h = lch(rgb)
    idx = COLOR_NAMES.index
    out = np.full(len(L), idx("gray"), np.int64)
    for name, lo, hi in HUES:
        out[(h >= lo) & (h < hi)] = idx(name)
    # red turns orange at a lower hue the lighter it is (see RED_ORANGE_H)
    dark_h, light_h = RED_ORANGE_H
    dark_l, light_l = RED_ORANGE_L
    ro = dark_h - (dark_h - light_h) * np.clip((L - dark_l) / (light_l - dark_l), 0.0, 1.0)
    red, orange = (h >= 20.0) & (h < ro), (h >= ro) & (h < 75.0)
    out[red], out[orange] = idx("red"), idx("orange")
    out[(L < DARK_PINK_L) & (h >= 340.0)] = idx("purple")  # plum, dark magenta
    out[(L < DARK_RED_L) & (h < 20.0)] = idx("red")  # burgundy, maroon
    out[red & (L >= LIGHT_RED_L) & (C < VIVID_C)] = idx("pink")  # salmon, light coral
    dull_red = red & (C < GRAY_RED_C)
    out[dull_red] = np.where(L[dull_red] >= GRAY_RED_L, idx("pink"), idx("brown"))  # rosy brown; dark: brown
    out[(h >= LIGHT_PURPLE_H) & (h < 309.0) & (L >= LIGHT_PURPLE_L)] = idx("purple")  # medium purple
    out[(h >= 95.0) & (h < 110.0) & (L < YELLOW_L)] = idx("green")  # olive
    low_c = C < BEIGE_MAX_C
    brown = (
        (red & (h >= WARM_HUE[0]) & (L < BROWN_L) & low_c)  # dark red-brown wood, leather
        | (orange & (((L < BROWN_L) & (C < VIVID_C)) | ((L < LIGHT_L) & low_c)))  # sienna, light brown
        | ((h >= 75.0) & (h < 95.0) & (L < YELLOW_L))  # dark yellow: brown, khaki-brown
    )
    out[brown] = idx("brown")
    beige = (h >= WARM_HUE[0]) & (h < WARM_HUE[1]) & (L >= LIGHT_L) & low_c & (C >= ACHROMATIC_C)
    out[beige] = idx("beige")
    achromatic = (C < ACHROMATIC_C) | ((C < TINT_C) & ~beige) | ((L < BLACK_L) & (C < TINT_C + 5))
    out[achromatic] = idx("gray")
    out[achromatic & (L < BLACK_L)] = idx("black")
    out[achromatic & (L >= WHITE_L)] = idx("white")
    return out


def eroded(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` ((H, W) bool, tightly cropped or not) at least :data:`ERODE_FRAC` of its box's
    longer side from its edge; the mask itself when that leaves fewer than :data:`MIN_ERODED_SHARE`."""
    import cv2

    ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if len(ys) == 0:
        return mask
    r = int(np.ceil(ERODE_FRAC * max(ys[-1] - ys[0] + 1, xs[-1] - xs[0] + 1)))
    if r < 1:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    # outside the array counts as background (OpenCV's default border would keep edge pixels)
    inner = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return inner if inner.sum() >= MIN_ERODED_SHARE * mask.sum() else mask


def color_shares(image: np.ndarray, mask: np.ndarray) -> list[tuple[str, float]]:
    """Shares of the colour names in the eroded ``mask`` ((H, W) bool) of ``image`` ((H, W, 3) uint8 RGB),
    all names with a share > 0, largest first (ties by name); empty for an empty mask."""
    pix = image[eroded(mask)]
    if len(pix) == 0:
        return []
    stride = max(1, len(pix) // MAX_PIXELS)
    counts = np.bincount(pixel_color_names(pix[::stride]), minlength=len(COLOR_NAMES))
    total = counts.sum()
    shares = [(COLOR_NAMES[k], counts[k] / total) for k in np.nonzero(counts)[0]]
    return sorted(shares, key=lambda ns: (-ns[1], ns[0]))


def color_attributes(image: np.ndarray, mask: np.ndarray) -> tuple[str, list[dict]]:
    """``(color, colors)`` for a subject record: the dominant name (``"mixed"`` below
    :data:`DOMINANT_SHARE`, ``"gray"`` for an empty mask) and ``[{"name", "share"}]`` of the names
    with a share >= :data:`MIN_SHARE`, shares rounded to 3 decimals, largest first."""
    shares = color_shares(image, mask)
    if not shares:
        return "gray", []
    color = shares[0][0] if shares[0][1] >= DOMINANT_SHARE else "mixed"
    return color, [{"name": n, "share": round(float(s), 3)} for n, s in shares if s >= MIN_SHARE]
