"""Merging sliding-window crop outputs into a large raster block by block, in bounded memory.

rslearn's ``RasterMerger`` rule (crops sorted by (x, y) and pasted in that order, each crop
but the first of its column/row trimmed by ``overlap_pixels // 2`` output pixels at its
left/top) gives every output pixel the value of one crop: along each axis, the last crop
(in origin order) whose trimmed extent covers the pixel. The rule is separable, so two
per-axis *owner* arrays (one int per output column and row) say which crop column and
crop row each output pixel comes from; :class:`StripePlan` computes them.

A scene is then produced stripe by stripe: vertical stripes of ``stripe_width`` output
columns (a multiple of the GeoTIFF block size), inside each stripe the crops owning
columns of it, row by row. :class:`StripeMerger` keeps only the output block rows that
crops of the current stripe still write into (``block_size`` rows x the stripe width)
and hands every finished block row to a writer, so that each GeoTIFF tile is written
once. Memory is independent of the scene size except for the two owner arrays; a crop
owning columns on both sides of a stripe boundary is predicted once per stripe (the
price of the bound: about ``crop width / stripe width`` more crops).

Only numpy is imported (the TF-free edge code uses it too).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np


def axis_owners(offsets: list[int], trims: list[int], size: int, extent: int) -> np.ndarray:
    """Per output pixel along one axis, the index of the crop it comes from (-1: none).

    Args:
        offsets: each crop's first output pixel, in merge order (ascending).
        trims: pixels trimmed from each crop's start (``overlap_pixels // 2`` or 0).
        size: a crop's output extent along the axis.
        extent: the output's extent along the axis.
    """
    owner = np.full((max(extent, 0),), -1, np.int32)
    for k, (offset, trim) in enumerate(zip(offsets, trims)):
        start, end = max(offset + trim, 0), min(offset + size, extent)
        if end > start:
            owner[start:end] = k
    return owner


def owned_ranges(owner: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Per crop, the half-open range of output pixels it owns ((0, 0) when none); each
    is contiguous because offsets and ends both ascend."""
    out = [(0, 0)] * count
    if owner.size == 0:
        return out
    change = np.flatnonzero(np.diff(owner)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [owner.size]])
    for start, end in zip(starts.tolist(), ends.tolist()):
        k = int(owner[start])
        if k >= 0:
            if out[k] != (0, 0):
                raise AssertionError(f"crop {k} owns two separate ranges")
            out[k] = (start, end)
    return out


class StripePlan:
    """The order in which crops are predicted and merged stripe by stripe.

    Args:
        x_offsets, y_offsets: the output offset (first output column / row) of each crop
            column / crop row, ascending.
        x_trims, y_trims: output pixels trimmed from the start of each crop column / row.
        crop_width, crop_height: a crop's output size.
        width, height: the merged output's size.
        stripe_width: output columns per stripe (a multiple of the block size keeps every
            GeoTIFF tile written once).

    Items are ``(stripe, kx, ky)``: in stripe order, then crop row ``ky``, then crop column
    ``kx`` among the columns of that stripe. Every crop appears at least once (a crop
    owning no output pixels, kept for its vector features, in the stripe of its offset).
    """

    def __init__(
        self,
        x_offsets: list[int],
        y_offsets: list[int],
        x_trims: list[int],
        y_trims: list[int],
        crop_width: int,
        crop_height: int,
        width: int,
        height: int,
        stripe_width: int = 4096,
    ):
        if stripe_width < 1:
            raise ValueError(f"stripe_width must be >= 1, got {stripe_width}")
        self.x_offsets, self.y_offsets = list(x_offsets), list(y_offsets)
        self.crop_width, self.crop_height = crop_width, crop_height
        self.width, self.height = width, height
        self.owner_x = axis_owners(self.x_offsets, list(x_trims), crop_width, width)
        self.owner_y = axis_owners(self.y_offsets, list(y_trims), crop_height, height)
        self.x_owned = owned_ranges(self.owner_x, len(self.x_offsets))
        self.y_owned = owned_ranges(self.owner_y, len(self.y_offsets))
        self.stripes = [(x0, min(x0 + stripe_width, width)) for x0 in range(0, max(width, 1), stripe_width)]
        self.stripe_columns: list[list[int]] = [[] for _ in self.stripes]
        self.first_stripe: list[int] = []
        for kx, (start, end) in enumerate(self.x_owned):
            if end > start:
                stripes = [j for j, (s0, s1) in enumerate(self.stripes) if start < s1 and end > s0]
            else:
                anchor = min(max(self.x_offsets[kx], 0), max(width - 1, 0))
                stripes = [j for j, (s0, s1) in enumerate(self.stripes) if s0 <= anchor < s1] or [len(self.stripes) - 1]
            for j in stripes:
                self.stripe_columns[j].append(kx)
            self.first_stripe.append(stripes[0])
        self._counts = [len(cols) * len(self.y_offsets) for cols in self.stripe_columns]
        self._starts = np.cumsum([0] + self._counts).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def item(self, index: int) -> tuple[int, int, int]:
        """``(stripe, kx, ky)`` of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range 0..{len(self) - 1}")
        j = int(np.searchsorted(self._starts, index, side="right")) - 1
        rest = index - self._starts[j]
        columns = self.stripe_columns[j]
        return j, columns[rest % len(columns)], rest // len(columns)

    def items(self) -> Iterator[tuple[int, int, int]]:
        for j, columns in enumerate(self.stripe_columns):
            for ky in range(len(self.y_offsets)):
                for kx in columns:
                    yield j, kx, ky

    def is_first(self, stripe: int, kx: int) -> bool:
        """Whether this is the first time crop column ``kx`` is predicted (its vector
        features are taken once)."""
        return self.first_stripe[kx] == stripe


BlockWriter = Callable[[np.ndarray, int, int], None]


class StripeMerger:
    """Pastes crop outputs in :class:`StripePlan` item order into block rows and writes
    every block row (``[C, rows, stripe columns]`` at (col, row)) once it is complete.

    Args:
        plan: the stripe plan.
        channels, dtype: the output's bands and dtype (values cast by assignment, as
            rslearn's merger does).
        write: called with (array, column offset, row offset) for each finished block.
        block_size: rows per block row (the GeoTIFF block height).
    """

    def __init__(self, plan: StripePlan, channels: int, dtype, write: BlockWriter, block_size: int = 512):
        self.plan = plan
        self.channels = channels
        self.dtype = np.dtype(dtype)
        self.write = write
        self.block_size = block_size
        self.stripe: int | None = None
        self.open: dict[int, np.ndarray] = {}
        self.next_row = 0  # first block row of the current stripe not yet written
        self.max_open = 0

    def _flush_rows(self, until: int) -> None:
        """Writes block rows ``next_row`` .. ``until - 1`` of the current stripe."""
        assert self.stripe is not None
        x0, x1 = self.plan.stripes[self.stripe]
        for r in range(self.next_row, until):
            y0 = r * self.block_size
            rows = min(self.block_size, self.plan.height - y0)
            array = self.open.pop(r, None)
            if array is None:
                array = np.zeros((self.channels, rows, x1 - x0), self.dtype)
            self.write(array, x0, y0)
        self.next_row = max(self.next_row, until)

    def _advance(self, stripe: int) -> None:
        """Finishes the current stripe and any stripe before ``stripe`` (all their block
        rows written), then makes ``stripe`` current."""
        if self.stripe is not None and stripe < self.stripe:
            raise ValueError(f"stripe {stripe} after stripe {self.stripe}: items must come in plan order")
        first = 0 if self.stripe is None else self.stripe
        for j in range(first, min(stripe, len(self.plan.stripes))):
            self.stripe = j
            self._flush_rows(-(-self.plan.height // self.block_size))
            self.open.clear()
            self.next_row = 0
        self.stripe = stripe

    def add(self, stripe: int, kx: int, ky: int, output: np.ndarray) -> None:
        """Pastes the owned part of crop (kx, ky) of ``stripe``; ``output`` is
        ``[C, crop_height, crop_width]`` (output pixels)."""
        if stripe != self.stripe:
            self._advance(stripe)
        plan = self.plan
        y_start, y_end = plan.y_owned[ky]
        if y_end > y_start:
            self._flush_rows(y_start // self.block_size)
        x0, x1 = plan.stripes[stripe]
        cx0, cx1 = plan.x_owned[kx]
        cx0, cx1 = max(cx0, x0), min(cx1, x1)
        if cx1 <= cx0 or y_end <= y_start:
            return
        src = np.asarray(output)
        if src.shape != (self.channels, plan.crop_height, plan.crop_width):
            raise ValueError(f"crop output must have shape {[self.channels, plan.crop_height, plan.crop_width]}, got {list(src.shape)}")
        ox, oy = plan.x_offsets[kx], plan.y_offsets[ky]
        for r in range(y_start // self.block_size, -(-y_end // self.block_size)):
            b0 = r * self.block_size
            b1 = min(b0 + self.block_size, plan.height)
            r0, r1 = max(y_start, b0), min(y_end, b1)
            if r1 <= r0:
                continue
            block = self.open.get(r)
            if block is None:
                block = self.open[r] = np.zeros((self.channels, b1 - b0, x1 - x0), self.dtype)
                self.max_open = max(self.max_open, len(self.open))
            block[:, r0 - b0 : r1 - b0, cx0 - x0 : cx1 - x0] = src[:, r0 - oy : r1 - oy, cx0 - ox : cx1 - ox]

    def finish(self) -> None:
        """Writes the remaining block rows (zeros where no crop wrote)."""
        self._advance(len(self.plan.stripes))
