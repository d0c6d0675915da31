"""kernels._pallas.call: inputs left in place in interpret mode, each kernel still sees its BlockSpec's view."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from kernels import _pallas


def _kernel(x_ref, row_ref, scalar_ref, o_ref):
    # x: a [bq, d] tile of head (b, h); row: a squeezed row chosen by the third grid axis; scalar: a [1] block.
    o_ref[...] = x_ref[...] * 2.0 + row_ref[...][None, :] + scalar_ref[0]


def _specs(bq, d):
    return [pl.BlockSpec((None, None, bq, d), lambda b, h, i: (b, h, i, 0)),
            pl.BlockSpec((None, d), lambda b, h, i: (i, 0)),
            pl.BlockSpec((1,), lambda b, h, i: (h,))]


def test_in_place_inputs_give_the_blockspec_views():
    b, h, length, d, bq = 2, 3, 32, 8, 8
    x = jax.random.normal(jax.random.key(0), (b, h, length, d))
    rows = jnp.arange(length // bq * d, dtype=jnp.float32).reshape(length // bq, d)
    scalars = jnp.array([10.0, 20.0, 30.0])
    kw = dict(grid=(b, h, length // bq), in_specs=_specs(bq, d),
              out_specs=pl.BlockSpec((None, None, bq, d), lambda b, h, i: (b, h, i, 0)),
              out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))
    ours = _pallas.call(_kernel, interpret=True, **kw)(x, rows, scalars)
    plain = pl.pallas_call(_kernel, interpret=True, **kw)(x, rows, scalars)
    want = x * 2 + jnp.repeat(rows, bq, axis=0)[None, None] + scalars[None, :, None, None]
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(plain))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(want), rtol=1e-6)
    # The inputs really are passed whole (memory_space=ANY) in interpret mode.
    jaxpr = jax.make_jaxpr(lambda *a: _pallas.call(_kernel, interpret=True, **kw)(*a))(x, rows, scalars)
    mappings = jaxpr.eqns[0].params["grid_mapping"].block_mappings
    # (a private field: transformed_block_aval up to JAX 0.11, block_aval from 0.12)
    avals = [getattr(m, "transformed_block_aval", None) or m.block_aval for m in mappings]
    assert [str(a.memory_space) for a in avals] == ["any", "any", "any", "default"]
    assert avals[0].shape == x.shape


def test_inputs_need_a_block_shape():
    with pytest.raises(ValueError, match="block shape"):
        _pallas.call(_kernel, grid=(1,), in_specs=[pl.BlockSpec(memory_space=pl.ANY)], out_specs=None,
                     out_shape=jax.ShapeDtypeStruct((1,), jnp.float32), interpret=True)
