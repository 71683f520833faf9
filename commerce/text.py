"""PT-BR review texts composed from fragments (openings, bodies per complaint theme, closings).

A review is not one template per star: it is an opening chosen by sentiment, zero to two body
sentences (the complaint theme, or praise), an optional closing, then surface noise the way real
Olist reviews look (lowercase, missing accents, "vc"/"pq", doubled exclamation marks). Titles are
short and rarer. Everything draws from a ``random.Random`` passed in, so a seed fixes the text.
"""

from __future__ import annotations

import random
import unicodedata

from .vocab import P_TITLE

OPENINGS = {
    "positive": ("Adorei!", "Produto excelente.", "Muito bom!", "Comprei e gostei muito.", "Tudo certo com o pedido.",
                 "Super recomendo a loja.", "Ótima compra.", "Gostei bastante.", "Maravilhoso!", "Perfeito.",
                 "Estou muito satisfeita.", "Fiquei satisfeito com a compra.", ""),
    "neutral": ("Produto ok.", "Razoável.", "Mais ou menos.", "Esperava mais.", "É o que dá pelo preço.",
                "Atende, mas nada demais.", "Regular.", ""),
    "negative": ("Péssima experiência.", "Decepcionado.", "Não gostei.", "Horrível.", "Muito insatisfeita.",
                 "Que decepção.", "Compra frustrante.", "Lamentável.", ""),
}

PRAISE = ("Chegou antes do prazo e muito bem embalado.", "Qualidade ótima, igual ao anúncio.", "Entrega rápida.",
          "Ótimo custo-benefício.", "{O_produto} é lindo e de boa qualidade.", "Chegou tudo certinho.",
          "Vendedor atencioso e entrega dentro do prazo.", "{O_produto} superou minhas expectativas.",
          "Material de primeira.", "Minha família amou {o_produto}.")

NEUTRAL_BODY = ("{O_produto} é ok, mas a qualidade podia ser melhor.", "Cumpre o que promete, nada demais.",
                "O acabamento d{o_produto} deixa a desejar.", "É menor do que parece nas fotos.",
                "Funciona, mas o material é simples.")

COMPLAINT_BODY = {
    "atraso_entrega": ("O pedido chegou com {dias} dias de atraso.", "Entrega muito atrasada, passou do prazo.",
                       "Demorou demais para chegar, bem depois da data prevista.",
                       "Atrasou {dias} dias e ninguém avisou nada.", "O prazo de entrega não foi cumprido.",
                       "Fiquei esperando {o_produto} por semanas, muito atraso."),
    "produto_errado": ("Recebi {um_produto} diferente do que comprei.", "Veio o produto errado.",
                       "A cor é diferente da do anúncio.", "Mandaram outro modelo, não é o que pedi.",
                       "O produto entregue não corresponde à descrição."),
    "defeito": ("{O_produto} veio com defeito.", "Parou de funcionar em {dias} dias.", "Não funciona.",
                "Apresentou defeito logo no primeiro uso.", "{O_produto} veio com problema de fábrica."),
    "avaria": ("A embalagem chegou amassada e {o_produto} quebrado.", "O produto chegou danificado.",
               "Veio todo riscado e com uma peça quebrada.", "{O_produto} chegou avariado."),
    "item_faltante": ("Comprei 2 unidades e só veio 1.", "Faltou uma peça d{o_produto}.",
                      "O pedido veio incompleto.", "Faltaram itens na entrega."),
    "extravio": ("A transportadora extraviou meu pedido.",
                 "O rastreio diz que foi entregue, mas nunca recebi, acho que foi extraviado.",
                 "Meu pacote se perdeu no caminho.", "O pedido foi extraviado e ninguém resolve."),
    "nao_recebido": ("Até agora não recebi {o_produto}.", "Paguei e não recebi nada.",
                     "O pedido nunca chegou.", "Não recebi o produto e o prazo já passou."),
    "atendimento": ("Tentei falar com a loja e ninguém responde.",
                    "Atendimento péssimo, não resolveram meu problema.",
                    "Abri uma reclamação e até agora sem retorno.", "O vendedor não responde as mensagens."),
}

MILD_COMPLAINT = {
    "atraso_entrega": ("Atrasou um pouco, mas o produto é bom.", "Chegou alguns dias depois do prazo, mas valeu."),
    "avaria": ("A caixa veio amassada, mas {o_produto} estava inteiro.",),
    "atendimento": ("O atendimento demorou a responder, mas resolveram.",),
}

CLOSINGS = {
    "positive": ("Recomendo!", "Compraria novamente.", "Nota 10.", "Obrigada!", "Recomendo a todos.",
                 "Voltarei a comprar.", ""),
    "neutral": ("Vamos ver se dura.", "Não sei se compraria de novo.", ""),
    "negative": ("Não recomendo.", "Nunca mais compro nessa loja.", "Quero meu dinheiro de volta.",
                 "Aguardo uma solução.", "Quero a troca urgente.", "Vou abrir reclamação no Procon.", ""),
}

TITLES = {
    "positive": ("Recomendo", "Muito bom", "Ótimo", "Super recomendo", "Excelente", "Amei"),
    "neutral": ("Razoável", "Ok", "Mais ou menos"),
    "negative": ("Péssimo", "Não recomendo", "Decepção", "Ruim", "Insatisfeito"),
}
COMPLAINT_TITLES = {"atraso_entrega": "Atrasou", "defeito": "Produto com defeito", "nao_recebido": "Não recebi",
                    "produto_errado": "Produto errado", "avaria": "Chegou quebrado", "extravio": "Extraviado",
                    "item_faltante": "Incompleto", "atendimento": "Sem resposta"}

FEMININE = {"toalha", "película", "capinha", "garrafa", "luminária", "prateleira", "mangueira", "boneca", "caneca",
            "bola", "cadeira", "mesa", "mala", "mochila", "furadeira", "torneira", "cafeteira", "air", "sanduicheira",
            "ração", "caminha", "coleira", "bolsa", "carteira", "agenda", "caixa", "bicicleta", "escova", "capa",
            "colônia", "mamadeira", "cadeirinha", "poltrona", "tábua", "pilhas"}

ABBREVIATIONS = ((" você ", " vc "), (" que ", " q "), (" porque ", " pq "), (" não ", " ñ "),
                 (" muito ", " mto "))


def strip_accents(text: str) -> str:
    """'Péssimo não' -> 'Pessimo nao'."""
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def article(noun: str, definite: bool = True) -> str:
    """'toalha de banho' -> 'a toalha de banho'; 'kit' -> 'o kit'; plurals get 'os'/'as'."""
    first = noun.split(" ", 1)[0].lower()
    fem = first in FEMININE
    plural = first.endswith("s") and first not in {"lápis", "óculos"} or first == "óculos"
    if definite:
        art = ("as" if fem else "os") if plural else ("a" if fem else "o")
    else:
        art = ("umas" if fem else "uns") if plural else ("uma" if fem else "um")
    return f"{art} {noun}"


def _noise(rng: random.Random, text: str) -> str:
    if not text:
        return text
    if rng.random() < 0.15:
        text = strip_accents(text)
    if rng.random() < 0.12:
        padded = f" {text} "
        for a, b in ABBREVIATIONS:
            if rng.random() < 0.6:
                padded = padded.replace(a, b)
        text = padded.strip()
    r = rng.random()
    if r < 0.25:
        text = text.lower()
    elif r < 0.30:
        text = text.upper()
    if rng.random() < 0.15:
        text = text.rstrip(".")
    if rng.random() < 0.08:
        text = text.replace("!", "!!")
    return text


def compose_review(rng: random.Random, sentiment: str, complaint: str, produto: str, dias: int,
                   mild: bool) -> tuple[str, str]:
    """Return (title, message) for one review; ``mild`` marks a positive review with a complaint."""
    parts = [rng.choice(OPENINGS[sentiment])]
    if sentiment == "positive":
        if mild and complaint in MILD_COMPLAINT:
            parts.append(rng.choice(MILD_COMPLAINT[complaint]))
        pool = [b for b in PRAISE if not (mild and "prazo" in b)]
        bodies = rng.sample(pool, k=rng.choice((0, 1, 1, 2)))
        parts.extend(bodies)
        if len(parts) == 1 or parts == [""]:
            parts.append(rng.choice(pool))
    elif sentiment == "neutral":
        if complaint != "nenhuma":
            parts.append(rng.choice(COMPLAINT_BODY[complaint]))
        if complaint == "nenhuma" or rng.random() < 0.4:
            parts.append(rng.choice(NEUTRAL_BODY))
    else:
        first = rng.choice(COMPLAINT_BODY[complaint])
        parts.append(first)
        if rng.random() < 0.35:
            other = [b for b in COMPLAINT_BODY[complaint] if b != first]
            parts.append(rng.choice(other))
        if complaint != "atendimento" and rng.random() < 0.2:
            parts.append(rng.choice(COMPLAINT_BODY["atendimento"]))
    parts.append(rng.choice(CLOSINGS[sentiment]))
    o_produto = article(produto)
    do_produto = "d" + o_produto
    message = " ".join(p for p in parts if p).format(
        o_produto=o_produto, O_produto=o_produto[0].upper() + o_produto[1:], do_produto=do_produto,
        um_produto=article(produto, False), produto=produto, dias=dias)
    title = ""
    if rng.random() < P_TITLE:
        specific = COMPLAINT_TITLES.get(complaint) if sentiment == "negative" else None
        title = specific if specific and rng.random() < 0.5 else rng.choice(TITLES[sentiment])
    return _noise(rng, title), _noise(rng, message)


def sentiment_of(score: int) -> str:
    """Olist convention: 1-2 stars negative, 3 neutral, 4-5 positive."""
    return "negative" if score <= 2 else ("neutral" if score == 3 else "positive")


def fmt_num(x: float | int, decimals: int = 1) -> str:
    """PT-BR number: 1234 -> '1.234'; 18.25 -> '18,3' (``decimals`` places, thousands with dots)."""
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}".replace(",", ".")
    s = f"{x:,.{decimals}f}"
    return s.replace(",", "\0").replace(".", ",").replace("\0", ".")
