"""Preprocessing, pure numpy: HU windows, resizing to the model grid and back, slice stacks (2.5-D).

Masks live in :mod:`aeanomaly.masks`.

Every function returns new arrays; inputs are never modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import sparse

from .errors import ConfigError
from .masks import body_mask, true_extent
from .parallel import map_slices

#: Window presets as (width, level) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500.0, -600.0),
    "abdomen": (400.0, 40.0),
    "liver": (150.0, 30.0),
    "mediastinum": (350.0, 50.0),
    "bone": (2000.0, 400.0),
}

#: Default window for each body region.
REGION_WINDOWS = {"lung": "lung", "chest": "lung", "abdomen": "abdomen", "liver": "liver"}


@dataclass(frozen=True)
class HUWindow:
    """A CT display window: HU in ``[level - width/2, level + width/2]`` maps linearly to [0, 1]."""

    width: float
    level: float
    name: str = "custom"

    @classmethod
    def parse(cls, spec: "str | HUWindow") -> "HUWindow":
        """A preset name (``lung``, ``abdomen``, ``liver``, ``mediastinum``, ``bone``) or ``"W,L"``."""
        if isinstance(spec, HUWindow):
            return spec
        text = str(spec).strip().lower()
        if text in WINDOW_PRESETS:
            w, l = WINDOW_PRESETS[text]
            return cls(w, l, text)
        try:
            w_s, l_s = text.split(",")
            w, l = float(w_s), float(l_s)
        except ValueError:
            raise ConfigError(
                f"window {spec!r} is neither a preset ({', '.join(WINDOW_PRESETS)}) nor 'W,L' in HU"
            ) from None
        if not np.isfinite(w) or not np.isfinite(l) or w <= 0:
            raise ConfigError(f"window {spec!r}: width must be a positive number of HU")
        return cls(w, l, f"{w:g},{l:g}")

    @property
    def low(self) -> float:
        return self.level - self.width / 2.0

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """Map HU to [0, 1] float32 with clipping (any shape)."""
        # one new array, divided and clipped in place: the two temporaries of the plain expression cost
        # more than the arithmetic on full-resolution slices (fresh pages), the same values
        out = np.asarray(np.subtract(np.asarray(hu, dtype=np.float32), np.float32(self.low), dtype=np.float32))
        np.divide(out, np.float32(self.width), out=out)
        return np.clip(out, 0.0, 1.0, out=out)

    def to_hu(self, x01: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`apply` inside the window (HU, float32)."""
        return np.asarray(x01, dtype=np.float32) * np.float32(self.width) + np.float32(self.low)

    def to_spec(self) -> str:
        return self.name if self.name in WINDOW_PRESETS else f"{self.width:g},{self.level:g}"


def to_unit_range(scan_values: np.ndarray, is_hu: bool, window: HUWindow) -> np.ndarray:
    """Intensities in [0, 1]: windowed HU, or already-normalised image values clipped to [0, 1]."""
    if is_hu:
        return window.apply(scan_values)
    return np.clip(np.asarray(scan_values, dtype=np.float32), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Resizing to the model grid and back
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridSpec:
    """How an in-plane ``(ny, nx)`` slice maps to the square model grid of ``size`` pixels.

    The slice is padded to a square of side ``side = max(ny, nx)`` (``pad_y``, ``pad_x`` before; the
    rest after), then resampled to ``size × size``.
    """

    ny: int
    nx: int
    size: int

    @property
    def side(self) -> int:
        return max(self.ny, self.nx)

    @property
    def pad_y(self) -> int:
        return (self.side - self.ny) // 2

    @property
    def pad_x(self) -> int:
        return (self.side - self.nx) // 2

    @property
    def scale(self) -> float:
        """Input pixels per model pixel."""
        return self.side / self.size

    def model_affine(self, affine: np.ndarray) -> np.ndarray:
        """Affine of the model grid (index ``(x', y', z)`` → RAS) given the input's internal affine.

        A model pixel centre ``i'`` covers input coordinate ``(i' + 0.5) * scale - 0.5 - pad``.
        """
        s = self.scale
        m = np.eye(4)
        m[0, 0] = s
        m[1, 1] = s
        m[0, 3] = 0.5 * s - 0.5 - self.pad_x
        m[1, 3] = 0.5 * s - 0.5 - self.pad_y
        return np.asarray(affine, dtype=float) @ m


@lru_cache(maxsize=64)
def resample_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """Sparse ``(n_out, n_in)`` resampling matrix, pixel-centre aligned, rows summing to 1.

    Downsampling averages the input pixels each output pixel covers (area weights: anti-aliased);
    upsampling interpolates linearly (edges replicated).
    """
    scale = n_in / n_out
    rows, cols, vals = [], [], []
    if n_out < n_in:
        for i in range(n_out):
            lo, hi = i * scale, (i + 1) * scale
            j = np.arange(int(np.floor(lo)), int(np.ceil(hi)))
            w = np.minimum(j + 1, hi) - np.maximum(j, lo)
            keep = w > 1e-12
            rows += [i] * int(keep.sum())
            cols += j[keep].tolist()
            vals += (w[keep] / w[keep].sum()).tolist()
    else:
        c = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
        j0 = np.floor(c).astype(int)
        j1 = np.minimum(j0 + 1, n_in - 1)
        f = c - j0
        rows = np.concatenate([np.arange(n_out), np.arange(n_out)])
        cols = np.concatenate([j0, j1])
        vals = np.concatenate([1 - f, f])
    mat = sparse.coo_matrix((vals, (rows, cols)), shape=(n_out, n_in)).tocsr()
    mat.sum_duplicates()
    mat.eliminate_zeros()
    return mat


#: Largest output side for which upsampling uses dense interpolation matrices.
DENSE_UPSAMPLE_MAX = 2048


#: Output rows (columns) per band of the upsampling products (:func:`_resample_stack`).
UPSAMPLE_BLOCK = 64


def _bands(r: np.ndarray) -> list[tuple[slice, slice]]:
    """Blocks of :data:`UPSAMPLE_BLOCK` rows of the interpolation matrix ``r`` with the columns their
    nonzero entries span: ``(rows, cols)``; blocks with no nonzero entry are left out."""
    out = []
    for i in range(0, r.shape[0], UPSAMPLE_BLOCK):
        rows = slice(i, min(i + UPSAMPLE_BLOCK, r.shape[0]))
        c0, c1 = true_extent(r[rows] != 0, 0)
        if c1 > c0:
            out.append((rows, slice(c0, c1)))
    return out


def _resample_stack(stack: np.ndarray, out_y: int, out_x: int, out: np.ndarray | None = None) -> np.ndarray:
    """Resample ``(z, y, x)`` to ``(z, out_y, out_x)`` (float32): a block mean for integer
    downsampling factors, dense products with the interpolation matrices for upsampling, else
    separable sparse filters (all three with the weights of :func:`resample_matrix`). With ``out``
    (float32 ``(z, out_y, out_x)``) the result is written there (the upsampling products directly)."""
    z, ny, nx = stack.shape
    a = stack.astype(np.float32, copy=False)
    if out is not None and not (out_y >= ny and out_x >= nx and max(out_y, out_x) <= DENSE_UPSAMPLE_MAX):
        out[...] = _resample_stack(a, out_y, out_x)
        return out
    if ny % out_y == 0 and nx % out_x == 0 and ny >= out_y and nx >= out_x:
        fy, fx = ny // out_y, nx // out_x
        acc = np.zeros((z, out_y, out_x), np.float32)
        for dy in range(fy):
            for dx in range(fx):
                acc += a[:, dy::fy, dx::fx]
        return acc * np.float32(1.0 / (fy * fx))
    if out_y >= ny and out_x >= nx and max(out_y, out_x) <= DENSE_UPSAMPLE_MAX:
        # Upsampling (model grid → input grid): products with the interpolation matrices, in bands.
        # Each output pixel needs 2 input pixels, so the matrices are banded: each block of
        # UPSAMPLE_BLOCK output rows (columns) is the product with the few input rows (columns) its
        # band reaches, not with all of them (1.8× faster than whole dense products at 128 → 512 px,
        # which were 6× faster than strided elementwise passes along x). Only the box of the stack's
        # nonzero rows and columns enters the products, and only the output rows and columns those
        # reach are computed (the rest is exactly 0): a heatmap is 0 outside its scoring region.
        # The sums lose only zero terms: the same result within float32 rounding.
        ry = resample_matrix(ny, out_y).toarray().astype(np.float32)
        rx = resample_matrix(nx, out_x).toarray().astype(np.float32)
        fresh = out is None
        out = np.zeros((z, out_y, out_x), np.float32) if fresh else out
        nz = a != 0
        (y0, y1), (x0, x1) = true_extent(nz, (0, 2)), true_extent(nz, (0, 1))
        if y1 == y0:
            if not fresh:
                out[...] = 0.0
            return out
        ry, rx = ry[:, y0:y1], rx[:, x0:x1]
        (oy0, oy1), (ox0, ox1) = true_extent(ry != 0, 1), true_extent(rx != 0, 1)
        ry, rx = ry[oy0:oy1], rx[ox0:ox1]
        if not fresh:  # the products below write the box of rows oy0:oy1 and columns ox0:ox1; 0 around it
            out[:, :oy0] = out[:, oy1:] = 0.0
            out[:, oy0:oy1, :ox0] = out[:, oy0:oy1, ox1:] = 0.0
        box = a[:, y0:y1, x0:x1]
        wide = np.empty((z, y1 - y0, ox1 - ox0), np.float32)
        for rows, cols in _bands(rx):
            np.matmul(box[..., cols], rx[rows, cols].T, out=wide[..., rows])
        bands = _bands(ry)
        for k in range(z):  # per slice: numpy's broadcast matmul over the slices is 3× slower
            for rows, cols in bands:
                np.matmul(ry[rows, cols], wide[k, cols], out=out[k, oy0 + rows.start : oy0 + rows.stop, ox0:ox1])
        return out
    ry = resample_matrix(ny, out_y)
    rx = resample_matrix(nx, out_x)
    a = stack.astype(np.float32, copy=False).transpose(1, 0, 2).reshape(ny, z * nx)
    a = (ry @ a).reshape(out_y, z, nx).transpose(2, 1, 0).reshape(nx, z * out_y)
    a = (rx @ a).reshape(out_x, z, out_y).transpose(1, 2, 0)
    return np.ascontiguousarray(a, dtype=np.float32)


def to_model_grid(stack: np.ndarray, size: int, pad_value: float = 0.0) -> tuple[np.ndarray, GridSpec]:
    """Pad ``(z, y, x)`` slices to square with ``pad_value`` and resample to ``(z, size, size)``.

    Returns the resampled float32 stack and the :class:`GridSpec` that :func:`from_model_grid` inverts.
    """
    arr = np.asarray(stack)
    if arr.ndim == 2:
        arr = arr[None]
    z, ny, nx = arr.shape
    grid = GridSpec(ny, nx, int(size))
    side = grid.side
    if (ny, nx) != (side, side):
        padded = np.full((z, side, side), pad_value, dtype=np.float32)
        padded[:, grid.pad_y : grid.pad_y + ny, grid.pad_x : grid.pad_x + nx] = arr
    else:
        padded = arr.astype(np.float32, copy=False)
    if side == grid.size:
        return np.array(padded, dtype=np.float32, copy=True), grid
    return _resample_stack(padded, grid.size, grid.size), grid


def from_model_grid(stack: np.ndarray, grid: GridSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`to_model_grid`: ``(z, size, size)`` → ``(z, ny, nx)`` float32; with ``out``
    (float32 ``(z, ny, nx)``) written there, without an intermediate copy when the input grid is square."""
    arr = np.asarray(stack, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    side = grid.side
    crop = (slice(None), slice(grid.pad_y, grid.pad_y + grid.ny), slice(grid.pad_x, grid.pad_x + grid.nx))
    if out is not None:
        if side != grid.size and (grid.ny, grid.nx) == (side, side):
            return _resample_stack(arr, side, side, out=out)
        out[...] = (arr if side == grid.size else _resample_stack(arr, side, side))[crop]
        return out
    full = arr if side == grid.size else _resample_stack(arr, side, side)
    return np.ascontiguousarray(full[crop], dtype=np.float32)


#: Slices :func:`from_model_grid_each` resamples at a time into its buffer before ``each`` stores them.
#: With the int16 quantiser, 128 → 512 px on the speed benchmark's phantom (idle machine, two runs): a
#: mostly-zero heatmap, as the blob gate leaves it, in 0.54–0.57× the time of resampling a 64-slice slab
#: and then quantising it, a dense one in 0.94–1.08×; 16 slices did better on the dense one (0.69–0.78×)
#: and worse on the sparse one (0.65×), 1 slice worse on both.
EACH_SLICES = 4


def from_model_grid_each(stack: np.ndarray, grid: GridSpec, each=None, dtype=np.float32) -> np.ndarray:
    """:func:`from_model_grid` of ``(z, size, size)`` in threads: ``(z, ny, nx)`` of ``dtype``. With
    ``each(resampled, out)``, each thread resamples :data:`EACH_SLICES` slices at a time into a small
    float32 buffer and ``each`` stores every slice of it (``resampled``, which ``each`` may overwrite)
    into its slice of the result (``out``), e.g. quantised: the float32 volume is never written, and
    the buffer stays in cache. The same values as :func:`from_model_grid` within float32 rounding
    (the products are taken over each group's nonzero box)."""
    arr = np.asarray(stack, dtype=np.float32)
    out = np.empty((len(arr), grid.ny, grid.nx), dtype)
    if each is None:  # each thread's chunk in one call: faster than slice by slice when nothing follows
        return map_slices(lambda h, out: from_model_grid(h, grid, out=out), arr, out=out)
    n = EACH_SLICES

    def chunk(h, out):
        buf = np.empty((n, grid.ny, grid.nx), np.float32)
        for k in range(0, len(h), n):
            m = min(n, len(h) - k)
            from_model_grid(h[k : k + m], grid, out=buf[:m])
            for j in range(m):
                each(buf[j], out[k + j])
        return out

    return map_slices(chunk, arr, out=out)


def model_to_input_yx(y: float, x: float, grid: GridSpec) -> tuple[float, float]:
    """A model-grid pixel position ``(y, x)`` (pixel centres at integers) as a position on the
    input slice grid ``(ny, nx)``: undoes the resampling to ``size`` and the square padding."""
    f = grid.side / grid.size
    return (float(y) + 0.5) * f - 0.5 - grid.pad_y, (float(x) + 0.5) * f - 0.5 - grid.pad_x


def mask_to_model_grid(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool/label mask ``(z, y, x)`` on the model grid (area fraction ≥ 0.5 → True).

    When the padded square side is a multiple of ``size`` (512 → 256 or 128), each model pixel
    covers a whole ``f × f`` block: its count of mask pixels is compared with ``f²/2`` in integers
    (the same decision as the area mean, without the float32 copy of the full-resolution mask). The
    count adds the ``f²`` strided sub-grids as uint8 (int32 from 16 × 16 blocks): 15× faster than a
    bool ``sum`` over the block axes at 512 → 256 px."""
    m = np.asarray(mask)
    m = m if m.dtype == bool else m > 0  # a bool mask is read as it is: no full-resolution copy
    if m.ndim == 2:
        m = m[None]
    z, ny, nx = m.shape
    grid = GridSpec(ny, nx, int(size))
    side, f = grid.side, grid.side // grid.size
    if side % grid.size or f < 2:
        res, _ = to_model_grid(m, size, pad_value=0.0)
        return res >= 0.5
    if (ny, nx) != (side, side):
        sq = np.zeros((z, side, side), bool)
        sq[:, grid.pad_y : grid.pad_y + ny, grid.pad_x : grid.pad_x + nx] = m
        m = sq
    u = m.view(np.uint8)
    counts = np.zeros((z, grid.size, grid.size), np.uint8 if f * f < 256 else np.int32)
    for i in range(f):
        for j in range(f):
            counts += u[:, i::f, j::f]
    return counts >= (f * f + 1) // 2  # 2·count ≥ f², in integers


# --------------------------------------------------------------------------------------------
# Slices
# --------------------------------------------------------------------------------------------


def slice_indices(n_slices: int, z_range: tuple[int, int] | None = None, stride: int = 1) -> np.ndarray:
    """Indices of the axial slices to use: ``z_range`` is ``[start, stop)`` (Python slicing rules)."""
    if stride < 1:
        raise ConfigError(f"stride must be ≥ 1, got {stride}")
    start, stop = (0, n_slices) if z_range is None else z_range
    return np.arange(n_slices)[slice(start, stop, stride)]


def body_fraction(mask: np.ndarray) -> np.ndarray:
    """Fraction of each slice covered by the mask, ``(z,)``."""
    m = np.asarray(mask, dtype=bool)
    return m.reshape(m.shape[0], -1).mean(axis=1)


def stack_neighbours(volume: np.ndarray, channels: int) -> np.ndarray:
    """2.5-D input: ``(z, y, x)`` → ``(z, y, x, channels)`` with the ``channels`` neighbouring slices
    centred on each slice (edges replicated). ``channels`` must be odd; 1 gives ``(z, y, x, 1)``."""
    if channels < 1 or channels % 2 == 0:
        raise ConfigError(f"channels must be an odd number ≥ 1, got {channels}")
    vol = np.asarray(volume, dtype=np.float32)
    half = channels // 2
    idx = np.clip(np.arange(vol.shape[0])[:, None] + np.arange(-half, half + 1)[None, :], 0, vol.shape[0] - 1)
    return np.ascontiguousarray(vol[idx].transpose(0, 2, 3, 1))


@dataclass
class PreparedScan:
    """A scan on the model grid.

    Attributes
    ----------
    x : np.ndarray
        float32 ``(z, size, size, channels)`` in [0, 1].
    body : np.ndarray
        bool ``(z, size, size)`` body mask on the model grid.
    keep : np.ndarray
        bool ``(z,)``: slices with enough body to be scored.
    grid : GridSpec
        How to map back to the input slice grid.
    spacing : tuple
        Model-grid spacing ``(z, y, x)`` in mm.
    affine : np.ndarray
        Model-grid affine (index ``(x, y, z)`` → RAS mm).
    """

    x: np.ndarray
    body: np.ndarray
    keep: np.ndarray
    grid: GridSpec
    spacing: tuple[float, float, float]
    affine: np.ndarray


def prepare_volume(
    values: np.ndarray,
    spacing: tuple[float, float, float],
    affine: np.ndarray,
    *,
    is_hu: bool,
    window: HUWindow,
    size: int,
    channels: int = 1,
    min_body_fraction: float = 0.05,
) -> PreparedScan:
    """Window, mask and resize a ``(z, y, x)`` volume to the model grid (pure)."""
    vals = np.asarray(values)
    if vals.ndim == 2:
        vals = vals[None]

    def chunk(v):  # every step is per slice, so z-chunks run in parallel threads
        return to_model_grid(to_unit_range(v, is_hu, window), size, pad_value=0.0)[0], \
            mask_to_model_grid(body_mask(v, is_hu=is_hu), size)

    x, body_m = map_slices(chunk, vals)
    grid = GridSpec(vals.shape[1], vals.shape[2], int(size))
    keep = body_fraction(body_m) >= min_body_fraction
    sz, sy, sx = spacing
    return PreparedScan(
        x=stack_neighbours(x, channels),
        body=body_m,
        keep=keep,
        grid=grid,
        spacing=(float(sz), float(sy) * grid.scale, float(sx) * grid.scale),
        affine=grid.model_affine(affine),
    )
