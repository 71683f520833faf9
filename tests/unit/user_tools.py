"""Tools of a user's own, for tests/unit/test_tools.py: what a user writes in their package and names in the run config
(``tools: {faq: ["user_tools:stock"]}``)."""

from __future__ import annotations

STOCK = {"toalha": 12, "luminaria": 0}


def stock(product: str) -> str:
    """Quantas unidades de um produto há em estoque.

    The second paragraph is not shown to the model."""
    return f"{product}: {STOCK.get(product, 0)} unidades"


def price(product: str, units: int, express: bool) -> dict:
    """O preço de um pedido: produto, unidades e se o frete é expresso."""
    return {"total": 10.0 * units + (15 if express else 5), "product": product}


def broken(query: str) -> str:
    """Uma ferramenta que falha."""
    raise KeyError(query)


def chatty(query: str) -> str:
    """Devolve muitas linhas."""
    return "\n".join(f"linha {i} {query}" for i in range(100))


def untyped(query) -> str:
    """Sem tipo."""
    return str(query)


def undocumented(query: str) -> str:
    return query


def typed_badly(query: set) -> str:
    """Um tipo que a chamada não escreve."""
    return str(query)
