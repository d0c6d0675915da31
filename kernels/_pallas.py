"""``pallas_call`` for the kernels of this package, with inputs left in place in interpret mode.

Pallas's interpret mode runs the grid as an XLA while loop whose carry holds every input and output. An input
given a ``BlockSpec`` is sliced at each step *and written back into the carry*, and XLA copies the whole
carried array to do that: a fixed cost of O(array size) per grid step (about 0.4 ms for a 4 MiB array on a
2-core Xeon), which made a block-sparse kernel cost as much as a dense one. ``call`` gives every input
``memory_space=ANY`` instead (the whole array, read in place) and hands the kernel the same view its
``BlockSpec`` would have produced (``ref.at[...]`` from the index map and the program ids), so a kernel is
written once against BlockSpec'd refs and runs unchanged on GPU, where the specs are used as given.
Outputs keep their specs (writing a block of a carried output is done in place).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from jax.experimental import pallas as pl


def _view(ref, spec: pl.BlockSpec, ids):
    """The block of ``ref`` that ``spec`` selects at program ``ids``, as a view (squeezed axes indexed)."""
    index = spec.index_map(*ids)
    parts = []
    for start, size in zip(index, spec.block_shape, strict=True):
        parts.append(start if size is None else pl.ds(start * size, size))
    return ref.at[tuple(parts)]


def call(kernel: Callable, *, grid: tuple[int, ...], in_specs: Sequence[pl.BlockSpec], out_specs, out_shape,
         interpret: bool, compiler_params=None, name: str | None = None, input_output_aliases=None):
    """``pl.pallas_call`` with the same arguments; in interpret mode the inputs stay in place (see above)."""
    aliases = dict(input_output_aliases or {})
    if not interpret:
        return pl.pallas_call(kernel, grid=grid, in_specs=list(in_specs), out_specs=out_specs,
                              out_shape=out_shape, compiler_params=compiler_params, name=name,
                              input_output_aliases=aliases)
    specs = list(in_specs)
    if any(s.block_shape is None or s.index_map is None for s in specs):
        raise ValueError("kernels._pallas.call needs a block shape and an index map for every input")

    def in_place(*refs):
        ids = tuple(pl.program_id(axis) for axis in range(len(grid)))
        views = [_view(ref, spec, ids) for ref, spec in zip(refs[: len(specs)], specs, strict=True)]
        return kernel(*views, *refs[len(specs):])

    return pl.pallas_call(in_place, grid=grid, in_specs=[pl.BlockSpec(memory_space=pl.ANY)] * len(specs),
                          out_specs=out_specs, out_shape=out_shape, interpret=True, name=name,
                          input_output_aliases=aliases)
