"""Anatomy of the synthetic CT phantoms: a torso in millimetres rendered onto a voxel grid.

``X`` points to the patient's left, ``Y`` posterior, ``Z`` superior, with ``Z = 0`` at the top of the
right hemidiaphragm. Everything here is pure numpy/scipy; :mod:`aeanomaly.datasets.synthetic` turns
the result into a :class:`~aeanomaly.datasets.synthetic.Phantom` and writes phantom sets to disk.
Label ids are those of :data:`LABELS`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Organ label ids of a phantom's label map.
LABELS = {0: "air", 1: "soft tissue", 2: "fat", 3: "muscle", 4: "bone", 5: "lung", 6: "liver",
          7: "spleen", 8: "kidney", 9: "vessel/airway", 10: "table"}
AIR, SOFT, FAT, MUSCLE, BONE, LUNG, LIVER, SPLEEN, KIDNEY, VESSEL, TABLE = range(11)


def render_anatomy(region: str, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Draw one subject and render it: HU with texture, blur and correlated noise, and its labels.

    Parameters
    ----------
    region : {"chest", "abdomen"}
    shape : tuple of int
        ``(z, y, x)`` voxels.
    spacing : tuple of float
        ``(z, y, x)`` mm.
    rng : np.random.Generator

    Returns
    -------
    hu : np.ndarray
        float32 ``(z, y, x)`` HU.
    labels : np.ndarray
        uint8 ``(z, y, x)``, ids in :data:`LABELS`.
    z0 : float
        ``Z`` in mm of the first slice.
    """
    s = _draw_subject(rng, region)
    g = _Grid(shape, spacing, s["zc"])
    cv = _Canvas(shape)
    t = _torso(g, s, cv)
    y_sp, wv, dv = _spine_geometry(s, g.Z, t["y_post"])
    ch = _chest(g, s, t, cv, y_sp, wv, dv)
    _abdomen(g, s, t, cv, rng, y_sp, wv, dv)
    _spine(g, s, t, cv)
    _vessel_trees(g, s, cv, rng, ch["thorax"], ch["hila"], ch["bronchi"],
                  [(-35, y_sp - 40, -75), (-20, y_sp - 30, -12)])
    # mild tissue heterogeneity, partial-volume blur, then spatially correlated quantum noise
    tex = _smooth_field(rng, shape, spacing, 4.0)
    amp = np.array([0, 6, 8, 5, 40, 18, 4, 4, 4, 3, 0], np.float32)[cv.lab]
    hu = cv.hu + tex * amp
    hu = ndi.gaussian_filter(hu, (0.3, s["blur"] * 2.7 / spacing[1], s["blur"] * 2.7 / spacing[2]))
    noise = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                                (0, s["noise_corr"], s["noise_corr"]), mode="wrap")
    hu += noise * (s["noise"] / max(float(noise.std()), 1e-6))
    return hu.astype(np.float32), cv.lab, float(g.Z.ravel()[0])


def _draw_subject(rng: np.random.Generator, region: str) -> dict:
    """Every per-subject random parameter, drawn in a fixed order (mm and HU)."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    s = dict(
        zc=(u(45, 65) if region == "chest" else u(-95, -70)),
        a=u(138, 165), b_ant=u(88, 118), b_post=u(92, 112), yc=u(-18, 0), p_ant=u(1.9, 2.2), p_post=u(2.4, 3.0),
        harm=rng.normal(0, 0.012, 3), harm_ph=rng.uniform(0, 2 * np.pi, 3), wob=rng.uniform(0, 2 * np.pi, 2),
        fat=u(8, 28), mus=u(5, 10), rib_w=u(5, 7), rib_per=u(24, 29), rib_ph=u(0, 30),
        d_sp=u(62, 80), wv=u(16, 20), dv=u(13, 16), v_per=u(25, 30), v_ph=u(0, 30),
        dome_l=u(8, 25), dome_k=u(0.0045, 0.0075), z_car=u(78, 96), med_w=u(16, 24),
        hx=u(18, 34), hy=u(-42, -26), hz=u(22, 42), ha=u(55, 68), hb=u(38, 47), hc=u(50, 62), h_ang=u(-0.8, -0.4),
        ao_r=u(11, 14), n_vessels=u(150, 260), tr_r=u(8, 10.5), lung_hu=u(-880, -820), lung_grad=u(20, 60),
        liv_left=u(25, 80), liv_wave=(u(8, 18), u(25, 45), u(0, 2 * np.pi)), liv_bot=u(-200, -150), sp_z=u(40, 60), sp_s=u(0.8, 1.25),
        st=(u(30, 55), u(-35, -10), u(-55, -30), u(35, 50), u(28, 40), u(35, 50), u(0.1, 0.7)),
        k_z=u(-125, -100), k_dz=u(5, 20), k_dx=u(38, 48), gall=bool(rng.random() < 0.7),
        fat_hu=u(-112, -88), mus_hu=u(45, 58), liv_hu=u(54, 68), spl_hu=u(44, 52), kid_hu=u(28, 36),
        blood=u(36, 46), soft=u(32, 42), bone=u(650, 900), marrow=u(180, 280),
        noise=u(10, 25), noise_corr=u(0.6, 1.0), blur=u(0.6, 0.85), n_loops=u(10, 18),
    )
    return s


def _ellipse(X, Y, cx, cy, a, b, angle=0.0):
    """Squared normalised radius of an in-plane ellipse rotated by ``angle`` (rad)."""
    dx, dy = X - cx, Y - cy
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return (dx / a) ** 2 + (dy / b) ** 2


def _band(v, lo, hi, step):
    """Anti-aliased indicator of ``lo < v < hi`` for samples ``step`` apart (fraction in [0, 1])."""
    return np.clip(np.minimum(v - lo, hi - v) / step + 0.5, 0, 1)


def _seg_dist(X, Y, p0, p1):
    """In-plane distance (mm) to the segment p0–p1; p0, p1 are (x, y) pairs of per-slice arrays."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((X - p0[0]) * dx + (Y - p0[1]) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    return np.hypot(X - p0[0] - t * dx, Y - p0[1] - t * dy)


def _tube(g, zs, xs, ys, r):
    """Mask of a tube along a polyline given by knots (z, x, y); each slab of thickness dz sees a capsule."""
    half, z = g.dz / 2, g.Z.ravel()
    out = np.zeros(g.shape, bool)
    ks = np.nonzero((z + half > zs[0]) & (z - half < zs[-1]))[0]
    if len(ks):
        zb = np.clip(z[ks] - half, zs[0], zs[-1])[:, None, None]
        zt = np.clip(z[ks] + half, zs[0], zs[-1])[:, None, None]
        p0 = (np.interp(zb, zs, xs), np.interp(zb, zs, ys))
        p1 = (np.interp(zt, zs, xs), np.interp(zt, zs, ys))
        out[ks] = _seg_dist(g.X, g.Y, p0, p1) < r
    return out


class _Grid:
    """Voxel-centre coordinates in mm, broadcastable to ``(z, y, x)``."""

    def __init__(self, shape, spacing, zc):
        (nz, ny, nx), (self.dz, self.dy, self.dx) = shape, spacing
        self.shape = shape
        self.Z = (zc + (np.arange(nz) - (nz - 1) / 2) * self.dz)[:, None, None]
        self.Y = ((np.arange(ny) - (ny - 1) / 2) * self.dy)[None, :, None]
        self.X = ((np.arange(nx) - (nx - 1) / 2) * self.dx)[None, None, :]


class _Canvas:
    """HU and label volumes painted in order, later structures over earlier ones."""

    def __init__(self, shape):
        self.hu = np.full(shape, -1000.0, np.float32)
        self.lab = np.zeros(shape, np.uint8)

    def paint(self, mask, value, label):
        m = np.broadcast_to(mask, self.hu.shape)
        self.hu[m] = np.broadcast_to(np.asarray(value, np.float32), self.hu.shape)[m]
        self.lab[m] = np.broadcast_to(np.asarray(label, np.uint8), self.lab.shape)[m]


def _smooth_field(rng, shape, spacing, sigma_mm):
    """Gaussian random field with unit std, correlation length ``sigma_mm``."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                            [max(sigma_mm / s, 0.01) for s in spacing], mode="wrap")
    return f / max(float(f.std()), 1e-6)


def _torso(g: _Grid, s: dict, cv: _Canvas) -> dict:
    """Table, body outline, fat, muscle, ribs, sternum; returns the geometry the organs need."""
    X, Y, Z = g.X, g.Y, g.Z
    wob = 1 + 0.04 * np.sin(Z / 90 + s["wob"][0])
    a, b_ant, b_post = s["a"] * wob, s["b_ant"] * (1 + 0.05 * np.sin(Z / 70 + s["wob"][1])), s["b_post"] * wob
    yc = s["yc"]
    y_post = yc + s["b_post"] * 1.05
    # patient table: curved carbon shell with a foam core, just below the body
    ytop = y_post + 3 - 0.0005 * X ** 2
    wide = np.abs(X) < 0.46 * g.dx * X.size
    shell = _band(Y, ytop, ytop + 4, g.dy) + _band(Y, ytop + 26, ytop + 30, g.dy)
    cv.paint(wide & (_band(Y, ytop, ytop + 30, g.dy) > 0.5), -950 + 1500 * shell, TABLE)
    # body outline: superellipse, flatter posteriorly, slowly varying along z, mild lobulation
    dy = Y - yc
    post = dy > 0
    p = np.where(post, s["p_post"], s["p_ant"])
    r = (np.abs(X) / a) ** p + (np.abs(dy) / np.where(post, b_post, b_ant)) ** p
    theta = np.arctan2(dy, X)
    mod = 1 + sum(h * np.cos((k + 2) * theta + ph + Z / 150) for k, (h, ph) in enumerate(zip(s["harm"], s["harm_ph"])))
    body = r ** (1 / p) < mod
    depth = np.stack([ndi.distance_transform_edt(sl, sampling=(g.dy, g.dx)) for sl in body]).astype(np.float32)
    sin_t = np.sin(theta)  # +1 posterior, -1 anterior
    fat_t = s["fat"] * (1 + 0.3 * np.cos(2 * theta) - 0.25 * sin_t) + 2
    mus_t = s["mus"] * np.where(Z > 0, 1 + 0.4 * np.clip(-sin_t, 0, 1), 0.8)  # pectoral muscles in the chest
    wall = fat_t + mus_t
    cv.paint(body, s["fat_hu"], FAT)
    cv.paint(depth > fat_t, s["mus_hu"], MUSCLE)
    # ribs: oblique bands (posterior ends higher), costal cartilage anteriorly; sternum in the midline
    ribs = Z > -40 - 80 * (0.5 + 0.5 * sin_t)
    band = (depth > wall) & (depth < wall + s["rib_w"]) & ribs
    phase = ((Z - 70 * sin_t - s["rib_ph"]) / s["rib_per"]) % 1.0
    rib = band & (phase < 0.3) & ((np.abs(X) > 22) | (dy > 0))
    cv.paint(rib, np.where(sin_t < -0.55, 130.0, s["bone"] * 0.8), BONE)
    cv.paint(band & (np.abs(X) < 15) & (dy < 0) & (Z > -15), s["marrow"] + 80, BONE)
    # scapulae: thin bony plates in the posterior chest wall, outside the ribs
    scap = (depth > fat_t + 3) & (depth < fat_t + 7) & (sin_t > 0.25) & (sin_t < 0.8) & (Z > 50)
    cv.paint(scap, s["bone"] * 0.7, BONE)
    cavity = depth > wall + s["rib_w"] * ribs + 2
    cv.paint(cavity, s["fat_hu"], FAT)
    # diaphragm: two paraboloid domes, the left lower; posterior recesses reach deeper
    k = s["dome_k"]
    zd = np.maximum(-k * ((X + 70) ** 2 + (1.1 * (Y - yc + 15)) ** 2),
                    -s["dome_l"] - k * ((X - 70) ** 2 + (1.1 * (Y - yc + 15)) ** 2))
    return dict(body=body, depth=depth, fat_t=fat_t, cavity=cavity, zd=zd, y_post=y_post, a=a)


def _spine_geometry(s, Z, y_post):
    scale = 1 + 0.25 * np.clip(-Z / 200, 0, 1)  # lumbar vertebrae are larger
    return y_post - s["d_sp"], s["wv"] * scale, s["dv"] * scale


def _spine(g, s, t, cv):
    """Vertebral bodies with discs, canal, posterior elements; paraspinal muscles and psoas."""
    X, Y, Z = g.X, g.Y, g.Z
    y_sp, wv, dv = _spine_geometry(s, Z, t["y_post"])
    yca = y_sp + dv + 9
    para = (_ellipse(X, Y, 0, (yca + t["y_post"]) / 2, 58, (t["y_post"] - yca) / 2 + 8) < 1) & (t["depth"] > t["fat_t"])
    cv.paint(para, s["mus_hu"], MUSCLE)
    psoas_r = 4 + 20 * np.clip((-95 - Z) / 80, 0, 1)
    for side in (-1, 1):
        cv.paint((_ellipse(X, Y, side * (wv + 12), y_sp, psoas_r, psoas_r * 0.9) < 1) & (Z < -90), s["mus_hu"], MUSCLE)
    e = _ellipse(X, Y, 0, y_sp, wv, dv)
    disc = ((Z - s["v_ph"]) / s["v_per"]) % 1.0 < 0.22
    cv.paint(e < 1, np.where(disc, 85.0, s["bone"]), np.where(disc, SOFT, BONE))
    cv.paint((e < (1 - 2.2 / wv) ** 2) & ~disc, s["marrow"], BONE)
    ring = _ellipse(X, Y, 0, yca, 13, 12)
    arch = (ring < 1) | ((np.abs(X) < 3.5) & (Y > yca) & (Y < t["y_post"] - t["fat_t"] - 10))
    arch |= (np.abs(Y - yca + 2) < 4) & (np.abs(X) < 28)
    cv.paint(arch & ~disc, s["bone"] * 0.8, BONE)
    cv.paint(ring < (8 / 13) ** 2, 25.0, SOFT)  # spinal canal: cord and CSF
    return y_sp, wv, dv


def _chest(g, s, t, cv, y_sp, wv, dv):
    """Lungs (gravity-dependent density), mediastinum, heart, great vessels, trachea and bronchi."""
    X, Y, Z = g.X, g.Y, g.Z
    above = (Z > t["zd"]) & (Z < 175)
    thorax = t["cavity"] & above & ~(_ellipse(X, Y, 0, y_sp, wv + 9, dv + 9) < 1)
    lung_hu = s["lung_hu"] + s["lung_grad"] * (Y - s["yc"]) / 100
    cv.paint(thorax, lung_hu, LUNG)
    dv0 = s["dv"]
    y_tr = y_sp - dv0 - 20
    med = thorax & (np.abs(X - 4) < s["med_w"] + 8 * np.clip((60 - Z) / 60, 0, 1)) & (Y < y_sp)
    cv.paint(med, s["fat_hu"], FAT)
    # heart with its epicardial fat, resting on the diaphragm
    hs = np.clip((s["a"] - s["fat"] - s["mus"]) / 125, 0.75, 1.1)  # heart scales with the thorax
    h = _ellipse(X, Y, s["hx"] * hs, s["yc"] + s["hy"], s["ha"] * hs, s["hb"] * hs, s["h_ang"]) + ((Z - s["hz"]) / s["hc"]) ** 2
    cv.paint(thorax & (h < 1.25), s["fat_hu"], FAT)
    cv.paint(thorax & (h < 1), s["soft"] + 3, SOFT)
    zc, r_ao = s["z_car"], s["ao_r"]
    xa, ya = -10.0, y_tr - 38
    xd, yd = s["wv"] + 10, y_sp - 6
    z_arch, z_pa = zc + 22, zc - 6
    blood = s["blood"]
    # pulmonary trunk and arteries to the hila, SVC, ascending and descending aorta, arch
    cv.paint(_tube(g, [z_pa - 25, z_pa], [xa + 26, xa + 26], [ya + 4, ya + 4], 13), blood, VESSEL)
    for side, zh in ((-1, z_pa - 4), (1, z_pa + 4)):
        cv.paint(_tube(g, [zh - 7, zh + 7], [xa + 26, side * 52], [ya + 4, y_tr + 6], 9) & thorax, blood, VESSEL)
    cv.paint(_tube(g, [s["hz"] + 25, 200], [xa - 22, xa - 22], [ya + 10, ya + 10], 9), blood, VESSEL)
    cv.paint(_tube(g, [s["hz"] + 20, z_arch], [xa, xa], [ya, ya], r_ao * 1.15), blood, VESSEL)
    cv.paint(_tube(g, [z_arch - r_ao, z_arch + r_ao], [xa, xd], [ya, yd], r_ao), blood, VESSEL)
    for i, dx in enumerate((-14, 2, 16)):
        cv.paint(_tube(g, [z_arch + r_ao, 200], [xa + dx + 4 * i, xa + dx + 8 * i], [ya + 8, ya + 20], 5), blood, VESSEL)
    cv.paint(_tube(g, [-250, -40, 0, z_arch], [8, 8, xd, xd], [y_sp - dv0 - 16, y_sp - dv0 - 16, yd, yd], r_ao),
             blood, VESSEL)
    cv.paint(_tube(g, [-30, 200], [10, 6], [y_sp - dv0 - 6, y_tr + 15], 6.5), s["soft"], SOFT)  # oesophagus
    # trachea, carina and main bronchi: soft-tissue wall, air lumen
    bz = [zc - 35, zc]
    for rr, val, lab in ((2.0, s["soft"], SOFT), (0.0, -990.0, VESSEL)):
        cv.paint(_tube(g, [zc, 200], [0, 0], [y_tr, y_tr], s["tr_r"] + rr), val, lab)
        cv.paint(_tube(g, bz, [-0.75 * 35, 0], [y_tr + 9, y_tr], 7 + rr) & above, val, lab)
        cv.paint(_tube(g, bz, [1.1 * 35, 0], [y_tr + 9, y_tr], 6 + rr) & above, val, lab)
    return dict(thorax=thorax, hila=[(side * 50, y_tr + 8, z) for side in (-1, 1) for z in (z_pa - 8, s["hz"] + 12)],
                bronchi=[(-0.75 * 35, y_tr + 9, zc - 35), (1.1 * 35, y_tr + 9, zc - 35)])


def _abdomen(g, s, t, cv, rng, y_sp, wv, dv):
    """Liver, gallbladder, stomach, spleen, kidneys, IVC and bowel loops in visceral fat."""
    X, Y, Z = g.X, g.Y, g.Z
    below = t["cavity"] & (Z < t["zd"] - 4) & (Z > -260)
    yc, a = s["yc"], t["a"]
    # small-bowel loops: smooth random walks with a wall, fluid or gas inside
    F = _smooth_field(rng, g.shape, (g.dz, g.dy, g.dx), 7.0)
    G = _smooth_field(rng, g.shape, (g.dz, g.dy, g.dx), 10.0)
    gut = below & (Y < y_sp - dv) & (cv.lab == FAT)
    segs = _random_walks(rng, gut, g, int(s["n_loops"]), 50, 6.0)
    if segs is not None:
        outer, inner = _render_tree(segs, g, wall=2.5)
        cv.hu += outer * gut * (s["soft"] + 5 - cv.hu)
        cv.hu += inner * gut * (np.where(G > 1.0, -985.0, 15.0 + 10 * F) - cv.hu)
        cv.lab[(outer > 0.5) & gut] = SOFT
    for side in (-1, 1):  # ascending / descending colon with mottled stool and gas
        colon = below & (_ellipse(X, Y, side * (a - s["fat"] - 45), yc + 20, 22, 22) < 1) & (Z < -70)
        cv.paint(colon, s["soft"], SOFT)
        cv.paint(colon & (_ellipse(X, Y, side * (a - s["fat"] - 45), yc + 20, 18, 18) < 1),
                 np.where(G > 0.3, -980.0, -150 + 120 * F), SOFT)
    # liver: under the right dome, left lobe reaching across anteriorly, inferior tip laterally
    zn = np.clip(1 + Z / 110, 0, 1)
    tpost = np.clip((Y - yc + 40) / 90, 0, 1)
    amp, per, ph = s["liv_wave"]  # a curved, lobulated medial border rather than a straight cut
    edge = (s["liv_left"] * zn - 35 * (1 - zn)) * (1 - tpost) + (-12 + 0.15 * Z) * tpost
    edge = edge + amp * np.sin((Y - yc) / per + ph + Z / 60) - 0.002 * (Y - yc) ** 2
    lat = np.clip((X + a) / a, 0, 1)
    liver = below & (X < edge) & (Z > s["liv_bot"] + 80 * lat)
    cv.paint(liver, s["liv_hu"], LIVER)
    if s["gall"]:
        cv.paint(below & (_ellipse(X, Y, -28, yc - 30, 14, 16) + ((Z + 85) / 35) ** 2 < 1), 12.0, SOFT)
    # stomach with an air–fluid level (air rises anteriorly), spleen along the left posterior wall
    sx, sy, sz, sa, sb, sc, lvl = s["st"]
    st = below & (_ellipse(X, Y, sx, sy + yc, sa, sb) + ((Z - sz) / sc) ** 2 < 1)
    cv.paint(st, s["soft"] + 5, SOFT)
    lumen = st & (_ellipse(X, Y, sx, sy + yc, sa - 5, sb - 5) + ((Z - sz) / (sc - 5)) ** 2 < 1)
    cv.paint(lumen, np.where(Y < sy + yc - sb * lvl, -990.0, 15.0), SOFT)
    ss = s["sp_s"]
    spl = _ellipse(X, Y, 0.58 * a, yc + 0.3 * s["b_post"], 22 * ss, 55 * ss, 0.9) + ((Z + s["dome_l"] + s["sp_z"]) / (45 * ss)) ** 2
    cv.paint(below & (spl < 1), s["spl_hu"], SPLEEN)
    # kidneys in perirenal fat, renal sinus fat medially; IVC right of the aorta
    for side, zk in ((-1, s["k_z"]), (1, s["k_z"] + s["k_dz"])):
        cx = side * (wv + s["k_dx"])
        kid = _ellipse(X, Y, cx, y_sp + 4, 24, 21, side * 0.5) + ((Z - zk) / 55) ** 2
        cv.paint(below & (kid < 1.5), s["fat_hu"], FAT)
        cv.paint(below & (kid < 1), s["kid_hu"], KIDNEY)
        sinus = _ellipse(X, Y, cx - side * 10, y_sp - 2, 9, 9) + ((Z - zk) / 28) ** 2
        cv.paint(below & (sinus < 1), s["fat_hu"] + 20, FAT)
    cv.paint(_tube(g, [-250, -10, 10], [-22, -22, -15], [y_sp - s["dv"] - 16] * 2 + [y_sp - s["dv"] - 30], 11)
             & (t["cavity"] | (Z < 0)), s["blood"], VESSEL)


def _voxel_index(g, pts):
    """Nearest voxel ``(z, y, x)`` of points given as ``(x, y, z)`` mm, and whether it lies in the grid."""
    nz, ny, nx = g.shape
    idx = np.stack([np.rint((pts[:, 2] - g.Z.ravel()[0]) / g.dz), np.rint(pts[:, 1] / g.dy + (ny - 1) / 2),
                    np.rint(pts[:, 0] / g.dx + (nx - 1) / 2)], axis=1).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.array(g.shape)), axis=1)
    return idx, ok


def _space_tree(rng, root, mask, g, n_points, r_leaf, r_max, detour=1.5):
    """A vessel-like tree filling ``mask`` from ``root`` (``(x, y, z)`` mm).

    ``n_points`` random points of the mask, taken in order of distance from the root, each join the
    earlier node that minimises length plus ``detour`` × the detour it makes, so branches run radially
    and fork. Radii follow Murray's law from the number of leaves downstream.
    Returns ``(p0, p1, r)``: segments ``(m, 3)`` as ``(x, y, z)`` mm and radii ``(m,)`` mm, or None.
    """
    vox = np.argwhere(mask)
    if not len(vox):
        return None
    vox = vox[rng.choice(len(vox), size=min(n_points, len(vox)), replace=False)]
    nz, ny, nx = g.shape
    jit = rng.uniform(-0.5, 0.5, vox.shape)
    pts = np.stack([(vox[:, 2] + jit[:, 2] - (nx - 1) / 2) * g.dx, (vox[:, 1] + jit[:, 1] - (ny - 1) / 2) * g.dy,
                    g.Z.ravel()[0] + (vox[:, 0] + jit[:, 0]) * g.dz], axis=1)
    root = np.asarray(root, float)
    pts = pts[np.argsort(np.linalg.norm(pts - root, axis=1))]
    nodes = np.vstack([root, pts])
    to_root = np.linalg.norm(nodes - root, axis=1)
    dist = np.linalg.norm(pts[:, None, :] - nodes[None, :, :], axis=2)
    cost = dist + detour * (dist + to_root[None, :] - to_root[1:, None])
    cost[np.triu_indices(len(pts), k=1, m=len(nodes))] = np.inf  # only nodes before the point
    parent = np.argmin(cost, axis=1)
    leaves = np.ones(len(nodes))
    for i in range(len(pts) - 1, -1, -1):
        leaves[parent[i]] += leaves[i + 1]
    r = np.minimum(r_max, r_leaf * leaves[1:] ** (1 / 2.5))
    return nodes[parent], pts, r


def _random_walks(rng, mask, g, n_walks, n_steps, step):
    """Smooth random walks inside ``mask`` (bowel loops): segments ``(p0, p1, r)`` in mm, or None."""
    vox = np.argwhere(mask)
    if not len(vox):
        return None
    nz, ny, nx = g.shape
    v = vox[rng.choice(len(vox), size=n_walks)]
    P = np.stack([(v[:, 2] - (nx - 1) / 2) * g.dx, (v[:, 1] - (ny - 1) / 2) * g.dy, g.Z.ravel()[0] + v[:, 0] * g.dz], 1)
    D = rng.normal(0, 1, (n_walks, 3))
    r = rng.uniform(7, 13, n_walks)
    p0, p1, rs = [], [], []
    for _ in range(n_steps):
        D = D / np.linalg.norm(D, axis=1, keepdims=True) + rng.normal(0, 0.45, D.shape)
        D[:, 2] *= 0.6  # loops wind mostly in the axial plane
        D /= np.linalg.norm(D, axis=1, keepdims=True)
        E = P + step * D
        idx, ok = _voxel_index(g, E)
        ok[ok] = mask[tuple(idx[ok].T)]
        p0.append(P[ok]), p1.append(E[ok]), rs.append(r[ok])
        P = np.where(ok[:, None], E, P)
        D = np.where(ok[:, None], D, -D + rng.normal(0, 0.5, D.shape))
    p0, p1, rs = np.concatenate(p0), np.concatenate(p1), np.concatenate(rs)
    return (p0, p1, rs) if len(rs) else None


def _render_tree(segs, g, wall=0.0):
    """Partial-volume fractions ``(outer, inner)`` in [0, 1] of tubes (``inner`` is the lumen if ``wall``)."""
    p0, p1, r = segs
    seg_len = np.linalg.norm(p1 - p0, axis=1)
    n = np.ceil(seg_len / (0.5 * min(g.dy, g.dx))).astype(int) + 1
    which = np.repeat(np.arange(len(r)), n)
    frac = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    pts = p0[which] + (p1 - p0)[which] * (frac / np.maximum(n[which] - 1, 1))[:, None]
    idx, ok = _voxel_index(g, pts)
    seeds = np.zeros(g.shape, np.float32)
    if not ok.any():
        z = np.zeros(g.shape, np.float32)
        return z, z
    np.maximum.at(seeds, tuple(idx[ok].T), r[which][ok].astype(np.float32))
    dist, near = ndi.distance_transform_edt(seeds == 0, sampling=(g.dz, g.dy, g.dx), return_indices=True)
    rn = seeds[tuple(near)]
    px = 0.5 * (g.dy + g.dx)

    def tube(rad):
        amp = np.minimum(1.0, 2 * rad / np.sqrt(px * g.dz))
        return (np.clip((rad + 0.5 * px - dist) / px, 0, 1) * amp).astype(np.float32)

    return tube(rn + wall), (tube(rn) if wall else np.zeros(g.shape, np.float32))


def _cat(segs):
    segs = [t for t in segs if t is not None]
    return tuple(np.concatenate(c) for c in zip(*segs)) if segs else None


def _vessel_trees(g, s, cv, rng, thorax, hila, bronchi, liver_roots):
    """Pulmonary arteries and veins, bronchi (air lumen, soft-tissue wall) and liver veins."""
    lung = cv.lab == LUNG
    vessels, airways = [], []
    for side in (-1, 1):
        half = lung & ((g.X < 0) if side < 0 else (g.X >= 0))
        vessels += [_space_tree(rng, h, half, g, int(s["n_vessels"]), 0.6, 7.0) for h in hila if np.sign(h[0]) == side]
        b = np.asarray(bronchi[(side + 1) // 2], float)
        near = half & ((g.X - b[0]) ** 2 + (g.Y - b[1]) ** 2 + (g.Z - b[2]) ** 2 < 60.0 ** 2)
        airways.append(_space_tree(rng, b, near, g, 25, 1.6, 5.0, detour=3.0))
    if (segs := _cat(vessels)) is not None:
        m = _render_tree(segs, g)[0] * thorax * ((cv.lab == LUNG) | (cv.lab == FAT))
        cv.hu += m * (s["blood"] - cv.hu)
        cv.lab[(m > 0.5) & lung] = VESSEL
    if (segs := _cat(airways)) is not None:
        outer, inner = _render_tree(segs, g, wall=1.0)
        cv.hu += outer * lung * (s["soft"] - cv.hu)
        cv.hu += inner * lung * (-990.0 - cv.hu)
        cv.lab[(outer > 0.5) & lung] = VESSEL
    liver = cv.lab == LIVER
    if (segs := _cat([_space_tree(rng, r, liver, g, 120, 0.6, 6.0) for r in liver_roots])) is not None:
        m = _render_tree(segs, g)[0] * liver * 0.8
        cv.hu += m * (s["blood"] - cv.hu)
        cv.lab[m > 0.5] = VESSEL


