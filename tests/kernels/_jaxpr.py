"""Reading kernels off a jaxpr, for tests that must show which grids ran (correct values alone would not)."""
import jax


def eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (jit, custom_vjp, ...), except kernel bodies."""
    for e in jaxpr.eqns:
        yield e
        if e.primitive.name == "pallas_call":
            continue
        for value in e.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from eqns(inner)


def pallas_grids(fn, *args) -> dict[str, tuple[int, ...]]:
    """{kernel name: grid} of the pallas_calls that ``fn(*args)`` traces to."""
    return {e.params["name"]: tuple(e.params["grid_mapping"].grid)
            for e in eqns(jax.make_jaxpr(fn)(*args).jaxpr) if e.primitive.name == "pallas_call"}
