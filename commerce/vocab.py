"""Static vocabularies of the synthetic Olist-like store: states, cities, categories, statuses, payments.

The weights follow the public Olist Brazilian e-commerce dataset (about 99k orders, 2016-2018):
SP leads with ~42% of customers, then RJ, MG, RS, PR; credit card pays ~74% of orders, then
boleto, voucher and debit card; ~97% of orders are delivered. Only the stdlib is used.
"""

from __future__ import annotations

# state: (share of customers, relative late-delivery factor, typical delivery days, cities)
STATES: dict[str, tuple[float, float, int, tuple[str, ...]]] = {
    "SP": (0.420, 0.75, 8, ("sao paulo", "campinas", "guarulhos", "santo andre", "sao bernardo do campo",
                            "osasco", "santos", "ribeirao preto", "sorocaba", "sao jose dos campos")),
    "RJ": (0.129, 1.60, 15, ("rio de janeiro", "niteroi", "nova iguacu", "duque de caxias", "sao goncalo",
                             "petropolis", "volta redonda")),
    "MG": (0.117, 0.75, 12, ("belo horizonte", "juiz de fora", "contagem", "uberlandia", "betim",
                             "montes claros")),
    "RS": (0.055, 0.90, 15, ("porto alegre", "caxias do sul", "pelotas", "canoas", "santa maria")),
    "PR": (0.051, 0.65, 12, ("curitiba", "londrina", "maringa", "ponta grossa", "cascavel")),
    "SC": (0.037, 1.30, 15, ("florianopolis", "joinville", "blumenau", "itajai", "chapeco")),
    "BA": (0.034, 1.70, 19, ("salvador", "feira de santana", "vitoria da conquista", "ilheus")),
    "DF": (0.022, 0.90, 13, ("brasilia",)),
    "ES": (0.020, 1.50, 15, ("vitoria", "vila velha", "serra", "cariacica")),
    "GO": (0.020, 1.00, 15, ("goiania", "anapolis", "aparecida de goiania")),
    "PE": (0.017, 1.30, 18, ("recife", "jaboatao dos guararapes", "olinda", "caruaru")),
    "CE": (0.013, 1.90, 21, ("fortaleza", "juazeiro do norte", "sobral")),
    "PA": (0.010, 1.60, 23, ("belem", "ananindeua", "santarem")),
    "MT": (0.009, 0.85, 18, ("cuiaba", "varzea grande", "rondonopolis")),
    "MA": (0.0075, 2.40, 21, ("sao luis", "imperatriz")),
    "MS": (0.007, 1.40, 15, ("campo grande", "dourados")),
    "PB": (0.0054, 1.40, 20, ("joao pessoa", "campina grande")),
    "PI": (0.005, 2.00, 19, ("teresina", "parnaiba")),
    "RN": (0.0049, 1.30, 19, ("natal", "mossoro")),
    "AL": (0.004, 2.90, 24, ("maceio", "arapiraca")),
    "SE": (0.0034, 2.00, 21, ("aracaju",)),
    "TO": (0.0028, 1.50, 17, ("palmas", "araguaina")),
    "RO": (0.0025, 0.70, 19, ("porto velho", "ji-parana")),
    "AM": (0.0015, 0.50, 26, ("manaus",)),
    "AC": (0.0008, 0.60, 21, ("rio branco",)),
    "AP": (0.0007, 0.60, 27, ("macapa",)),
    "RR": (0.0005, 1.50, 29, ("boa vista",)),
}

STATE_NAMES = {
    "SP": "São Paulo", "RJ": "Rio de Janeiro", "MG": "Minas Gerais", "RS": "Rio Grande do Sul",
    "PR": "Paraná", "SC": "Santa Catarina", "BA": "Bahia", "DF": "Distrito Federal",
    "ES": "Espírito Santo", "GO": "Goiás", "PE": "Pernambuco", "CE": "Ceará", "PA": "Pará",
    "MT": "Mato Grosso", "MA": "Maranhão", "MS": "Mato Grosso do Sul", "PB": "Paraíba", "PI": "Piauí",
    "RN": "Rio Grande do Norte", "AL": "Alagoas", "SE": "Sergipe", "TO": "Tocantins", "RO": "Rondônia",
    "AM": "Amazonas", "AC": "Acre", "AP": "Amapá", "RR": "Roraima",
}

SELLER_STATES = {"SP": 0.60, "MG": 0.08, "PR": 0.11, "RJ": 0.05, "SC": 0.06, "RS": 0.05, "DF": 0.01,
                 "GO": 0.01, "BA": 0.01, "ES": 0.01, "PE": 0.01}

# category: (share of orders, median price in BRL, human label, product nouns)
CATEGORIES: dict[str, tuple[float, float, str, tuple[str, ...]]] = {
    "cama_mesa_banho": (0.100, 75, "cama, mesa e banho",
                        ("jogo de lençol", "toalha de banho", "edredom", "jogo de toalhas", "cobre-leito")),
    "beleza_saude": (0.090, 85, "beleza e saúde",
                     ("kit de maquiagem", "secador de cabelo", "hidratante", "escova alisadora")),
    "esporte_lazer": (0.078, 95, "esporte e lazer",
                      ("bicicleta ergométrica", "tênis de corrida", "kit de halteres", "bola de futebol")),
    "moveis_decoracao": (0.074, 90, "móveis e decoração",
                         ("luminária", "quadro decorativo", "prateleira", "espelho de parede")),
    "informatica_acessorios": (0.070, 110, "informática e acessórios",
                               ("mouse sem fio", "teclado", "fone de ouvido", "cabo HDMI", "pendrive")),
    "utilidades_domesticas": (0.063, 70, "utilidades domésticas",
                              ("jogo de panelas", "garrafa térmica", "organizador", "tábua de corte")),
    "relogios_presentes": (0.053, 190, "relógios e presentes", ("relógio", "relógio de pulso", "kit presente")),
    "telefonia": (0.040, 60, "telefonia", ("capinha de celular", "carregador", "película", "fone bluetooth")),
    "ferramentas_jardim": (0.039, 95, "ferramentas e jardim",
                           ("mangueira", "kit de ferramentas", "cortador de grama", "vaso")),
    "automotivo": (0.038, 110, "automotivo", ("capa de volante", "aspirador automotivo", "tapete automotivo")),
    "brinquedos": (0.037, 85, "brinquedos", ("boneca", "carrinho de controle remoto", "quebra-cabeça", "lego")),
    "cool_stuff": (0.034, 140, "cool stuff", ("luminária gamer", "caneca personalizada", "kit geek")),
    "perfumaria": (0.030, 90, "perfumaria", ("perfume", "colônia", "kit de perfumes")),
    "bebes": (0.027, 110, "bebês", ("carrinho de bebê", "kit berço", "mamadeira", "cadeirinha")),
    "eletronicos": (0.025, 55, "eletrônicos", ("caixa de som", "controle remoto", "pilhas recarregáveis")),
    "papelaria": (0.023, 75, "papelaria", ("caderno", "kit de canetas", "agenda", "mochila escolar")),
    "fashion_bolsas_e_acessorios": (0.018, 65, "bolsas e acessórios", ("bolsa", "carteira", "óculos de sol")),
    "pet_shop": (0.017, 85, "pet shop", ("ração", "caminha para cachorro", "arranhador", "coleira")),
    "moveis_escritorio": (0.015, 160, "móveis de escritório", ("cadeira de escritório", "mesa para computador")),
    "consoles_games": (0.011, 120, "consoles e games", ("controle de videogame", "jogo de videogame")),
    "malas_acessorios": (0.010, 150, "malas e acessórios", ("mala de viagem", "mochila de viagem")),
    "construcao_ferramentas_construcao": (0.008, 100, "construção",
                                          ("furadeira", "kit de chaves", "torneira")),
    "eletrodomesticos": (0.007, 120, "eletrodomésticos", ("liquidificador", "aspirador de pó", "ventilador")),
    "instrumentos_musicais": (0.006, 180, "instrumentos musicais", ("violão", "teclado musical", "cabo P10")),
    "eletroportateis": (0.006, 150, "eletroportáteis", ("cafeteira", "air fryer", "sanduicheira")),
    "livros_interesse_geral": (0.005, 40, "livros", ("livro", "box de livros")),
    "alimentos": (0.005, 45, "alimentos", ("kit de chocolates", "café especial", "azeite")),
    "moveis_sala": (0.004, 200, "móveis de sala", ("rack para TV", "poltrona", "mesa de centro")),
}

# order_status: share of orders (Olist)
STATUSES = {"delivered": 0.970, "shipped": 0.011, "canceled": 0.0063, "unavailable": 0.0061,
            "invoiced": 0.0032, "processing": 0.0030, "approved": 0.0004}
STATUS_PT = {"delivered": "entregue", "shipped": "enviado", "canceled": "cancelado",
             "unavailable": "indisponível", "invoiced": "faturado", "processing": "em processamento",
             "approved": "aprovado"}

PAYMENTS = {"credit_card": 0.739, "boleto": 0.190, "voucher": 0.056, "debit_card": 0.015}
PAYMENT_PT = {"credit_card": "cartão de crédito", "boleto": "boleto", "voucher": "voucher",
              "debit_card": "cartão de débito"}

# Review score distribution, 1..5 stars (Olist): the build solves per-group distributions
# (late, on time, not delivered) whose mixture is this marginal.
SCORE_TARGET = (0.115, 0.032, 0.082, 0.193, 0.578)
LATE_SCORES = (0.42, 0.09, 0.15, 0.13, 0.21)        # mean ~2.6 stars
UNDELIVERED_SCORES = (0.62, 0.09, 0.10, 0.07, 0.12)  # mean ~2.0 stars
LATE_SHARE = 0.08                                     # of delivered orders

# Probability that a review has a text message, by star (Olist: negative reviews are written more).
P_MESSAGE = (0.86, 0.80, 0.62, 0.38, 0.30)
P_TITLE = 0.22                                        # among reviews with a message

COMPLAINTS = ("atraso_entrega", "produto_errado", "defeito", "avaria", "item_faltante", "extravio",
              "nao_recebido", "atendimento")
NO_COMPLAINT = "nenhuma"
COMPLAINT_PT = {"atraso_entrega": "atraso na entrega", "produto_errado": "produto errado",
                "defeito": "defeito", "avaria": "produto avariado", "item_faltante": "item faltante",
                "extravio": "extravio", "nao_recebido": "pedido não recebido",
                "atendimento": "atendimento", "nenhuma": "nenhuma"}
# Complaint mix of negative or neutral reviews of orders delivered on time.
ONTIME_COMPLAINTS = {"produto_errado": 0.20, "defeito": 0.24, "avaria": 0.16, "item_faltante": 0.16,
                     "atendimento": 0.14, "atraso_entrega": 0.10}
UNDELIVERED_COMPLAINTS = {"nao_recebido": 0.55, "extravio": 0.20, "atendimento": 0.25}
