"""Test PDFs: invoices in the pt_simon_invoice_v1 layout with their ground truth, plain text PDFs, hostile files.

    pdf, truth = make_invoice(n_lines=510, seed=7)
    pdf = make_text_pdf([["page one, line one", "line two"], ["page two"]], title="T")

The truth mirrors the XML of ``pt_simon_invoice_v1`` (amounts with two decimals, quantities and percents as
plain decimals, ISO dates) so a test can compare field by field.

    python tests/support/invoicegen.py out.pdf --lines 510 --seed 7 [--truth out.json]
"""

import argparse
import io
import json
import random
import re
import struct
import zlib
from decimal import ROUND_HALF_UP, Decimal
from datetime import date, timedelta

from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen import canvas

__all__ = [
    "make_invoice",
    "make_text_pdf",
    "make_encrypted_pdf",
    "make_zero_page_pdf",
    "make_truncated_pdf",
    "make_broken_xref_pdf",
    "make_page_tree_loop_pdf",
    "make_flate_bomb_pdf",
    "make_png_bytes",
    "pt_amount",
    "pt_decimal",
]

PAGE_W, PAGE_H = A4
FONT, BOLD, SIZE = "Helvetica", "Helvetica-Bold", 8
ROW_H, WRAP_H = 12, 10  # distance between rows, and between a row and its wrapped second line
TABLE_TOP_FIRST, TABLE_TOP_NEXT = 640, 800
TABLE_BOTTOM = 80  # rows stay above this; the footer lives below
TOTALS_HEIGHT = 60

# (header label, x, alignment): left columns start at x, right columns end at x
COLUMNS = [
    ("Ref.", 40, "left"),
    ("Descrição", 92, "left"),
    ("Qtd.", 318, "right"),
    ("Un.", 326, "left"),
    ("Preço Unit.", 400, "right"),
    ("Desc. %", 444, "right"),
    ("IVA %", 480, "right"),
    ("Total", 555, "right"),
]
DESCRIPTION_WIDTH = 185

SUPPLIERS = ["SIMON ELECTRIC PORTUGAL, LDA.", "SIMON ILUMINAÇÃO & CIA, S.A."]
CUSTOMERS = [
    "Electro Norte, Lda.", "Instalações Conceição & Filhos, Lda.", "Águeda Eléctrica — Soluções, S.A.",
    "João Gonçalves \"O Electricista\"", "Luz d'Ouro, Unipessoal Lda.",
]
# Names and addresses as long as real ones get: a supplier name past the middle of the page (up to the FATURA
# block, which then moves right), a customer name and address running across the page, a long street line.
LONG_SUPPLIERS = ["SIMON ELECTRIC PORTUGAL — MATERIAL ELÉCTRICO, LDA.", "SIMON ILUMINAÇÃO & SISTEMAS DE CONTROLO, S.A.",
                  "SIMON ELECTRIC PORTUGAL, SOCIEDADE UNIPESSOAL, LDA.", "SIMON DISTRIBUIÇÃO IBÉRICA DE MATERIAL, S.A."]
LONG_CUSTOMERS = [
    "Instalações Eléctricas Conceição, Gonçalves & Filhos — Engenharia e Manutenção Industrial, Lda.",
    "Cooperativa Agrícola de Produtores de Frutas e Produtos Hortícolas do Vale do Mondego, C.R.L.",
    "Águeda Eléctrica — Soluções de Iluminação, Domótica e Automação para Edifícios, S.A.",
]
LONG_STREETS = [
    "Avenida Dom João II, Edifício Infante, Lote 1.16.05, Piso 3, Fração B, 1990-083 Parque das Nações, Lisboa",
    "Rua Engenheiro Ferreira Dias, n.º 924, Armazém 7 — Zona Industrial de Ramalde, 4100-246 Porto",
]
LONG_SUPPLIER_STREETS = ["Zona Industrial da Maia I, Sector X, Rua Dr. António Pereira, Lote 5, 4470-000 Maia",
                         "Parque Empresarial de Alverca, Estrada Nacional 10, km 128, 2615-190 Alverca"]
SUPPLIER_STREET = "Zona Industrial da Maia, Lote 5, 4470-000 Maia"
STREETS = ["Rua da Indústria, 145, 4470-177 Maia", "Av. da República, 12 - 3.º Esq., 1050-191 Lisboa",
           "Travessa do Açúcar, 7, 3000-123 Coimbra"]
NOUNS = ["Tomada schuko 16A", "Interruptor simples", "Cabo \"H07V-U\" 1,5mm²", "Calha técnica 40x60",
         "Disjuntor 2P C16", "Luminária LED 36W", "Caixa de derivação", "Comutador de escada",
         "Módulo USB-A/C carregador", "Espelho 'Série 82' Detail", "Iluminação de presença",
         "Termóstato digital", "Regulador rotativo"]
ADJECTIVES = ["branca", "antracite", "alumínio", "IP55", "c/ protecção infantil", "desc. 10% campanha",
              "50/60Hz", "230V~", "embalagem c/ 10", "ç/ã/é/õ teste", "ref. antiga 1234/A", "100% reciclável",
              "série Ibérica, cor marfim", "para calha \"Simon\""]
UNITS = ["UN", "M", "KG", "CX"]
VAT_RATES = [6, 13, 23]
CENT = Decimal("0.01")


def pt_decimal(value, places=None):
    """Format a Decimal the Portuguese way: '.' groups thousands, ',' is the decimal mark."""
    value = Decimal(value)
    text = f"{value:,.{places}f}" if places is not None else f"{value.normalize():,f}"
    return text.replace(",", "_").replace(".", ",").replace("_", ".")


def pt_amount(value):
    """Format an amount as 12.345,67."""
    return pt_decimal(value, 2)


def plain(value):
    """A quantity or percent as the XML shows it: 12, 2.5, 5."""
    return f"{Decimal(value).normalize():f}"


def _random_line(rnd):
    parts = [rnd.choice(NOUNS)] + rnd.sample(ADJECTIVES, rnd.choice([0, 1, 1, 2, 3, 4]))
    description = " ".join(parts)
    if rnd.random() < 0.5:
        quantity = Decimal(rnd.randint(1, 500))
    elif rnd.random() < 0.1:
        quantity = Decimal(rnd.randint(1000, 20000))
    else:
        quantity = (Decimal(rnd.randint(1, 50000)) / Decimal(rnd.choice([10, 100, 1000]))).normalize()
    price = Decimal(rnd.randint(5, 25000 if rnd.random() < 0.95 else 500000)) / 100
    discount = rnd.choice([Decimal(0), Decimal(0), Decimal(5), Decimal("12.5"), Decimal("2.25"), Decimal(30)])
    total = (quantity * price * (1 - discount / 100)).quantize(CENT, ROUND_HALF_UP)
    return {
        "Reference": f"{rnd.randint(10000, 99999)}-{rnd.randint(10, 99)}" + rnd.choice(["", "", "A", "-B"]),
        "Description": description,
        "Quantity": quantity,
        "Unit": rnd.choice(UNITS),
        "UnitPrice": price,
        "DiscountPercent": discount,
        "VATPercent": Decimal(rnd.choice(VAT_RATES)),
        "LineTotal": total,
    }


def _paginate(rows):
    """Split rows (with their wrapped heights) into pages; the last page keeps room for the totals."""
    pages, current, y = [], [], TABLE_TOP_FIRST - ROW_H
    for row in rows:
        height = ROW_H + WRAP_H * (len(row["wrapped"]) - 1)
        if y - height < TABLE_BOTTOM and current:
            pages.append(current)
            current, y = [], TABLE_TOP_NEXT - ROW_H
        current.append(row)
        y -= height
    pages.append(current)
    totals_on_new_page = y - TOTALS_HEIGHT < TABLE_BOTTOM
    if totals_on_new_page:
        pages.append([])
    return pages


def _draw_cell(c, text, x, align, y):
    if align == "right":
        c.drawRightString(x, y, text)
    else:
        c.drawString(x, y, text)


def _draw_header(c, y):
    c.setFont(BOLD, SIZE)
    for label, x, align in COLUMNS:
        _draw_cell(c, label, x, align, y)
    c.setLineWidth(0.5)
    c.line(40, y - 3, 555, y - 3)
    c.setFont(FONT, SIZE)


def make_invoice(n_lines=10, seed=0, *, omit=(), net_total_delta="0", long_names=False, line_total_deltas=None):
    """Return (pdf_bytes, truth) for a random invoice of n_lines items.

    long_names: a supplier name that runs past the middle of the page, and long customer names and addresses.

    omit: names of header fields not printed at all ("DueDate", "IssueDate", "InvoiceNumber", "Totals",
    "Customer"); they are left out of the truth too. net_total_delta: added to the printed Total Ilíquido, to
    make the lines-sum check fail (the truth's check then says "false"). line_total_deltas: {line index: amount}
    added to those lines' printed Total (a supplier's slip: Qtd × Preço × (1 − Desc) no longer gives it), while
    the totals stay those of the right line totals, so the printed lines do not add up to Total Ilíquido either.
    """
    rnd = random.Random(seed)
    omit = set(omit)
    issued = date(2024, 1, 1) + timedelta(days=rnd.randint(0, 1000))
    due = issued + timedelta(days=rnd.choice([0, 30, 60, 90]))
    number = f"FT {issued.year}{rnd.choice('ABC')}/{rnd.randint(1, 999999):06d}"
    supplier = {"Name": rnd.choice(LONG_SUPPLIERS if long_names else SUPPLIERS),
                "TaxID": f"PT5{rnd.randint(0, 99999999):08d}"}
    customer = {"Name": rnd.choice(LONG_CUSTOMERS if long_names else CUSTOMERS),
                "TaxID": f"{rnd.choice('5689')}{rnd.randint(0, 99999999):08d}"}
    address = rnd.choice(LONG_STREETS if long_names else STREETS)
    supplier_street = rnd.choice(LONG_SUPPLIER_STREETS) if long_names else SUPPLIER_STREET

    lines = [_random_line(rnd) for _ in range(n_lines)]
    for line in lines:
        line["wrapped"] = simpleSplit(line["Description"], FONT, SIZE, DESCRIPTION_WIDTH)
    net = sum((line["LineTotal"] for line in lines), Decimal(0))
    vat = sum(
        (sum((l["LineTotal"] for l in lines if l["VATPercent"] == rate), Decimal(0)) * rate / 100).quantize(
            CENT, ROUND_HALF_UP)
        for rate in VAT_RATES
    )
    printed_net = net + Decimal(net_total_delta)
    grand = printed_net + vat
    for index, delta in (line_total_deltas or {}).items():
        lines[index]["LineTotal"] += Decimal(delta)
    printed_lines_sum = sum((line["LineTotal"] for line in lines), Decimal(0))

    pages = _paginate(lines)
    buffer = io.BytesIO()
    c = canvas.Canvas(buffer, pagesize=A4, invariant=1)
    c.setTitle(f"Fatura {number}")
    c.setAuthor(supplier["Name"])
    for page_number, rows in enumerate(pages, start=1):
        if page_number == 1:
            _draw_first_page_head(c, supplier, customer, address, number, issued, due, omit, supplier_street)
            y = TABLE_TOP_FIRST
        else:
            y = TABLE_TOP_NEXT
        if rows or page_number == 1:
            _draw_header(c, y)
        y -= ROW_H
        for row in rows:
            values = {
                "Ref.": row["Reference"], "Descrição": row["wrapped"][0], "Qtd.": pt_decimal(row["Quantity"]),
                "Un.": row["Unit"], "Preço Unit.": pt_amount(row["UnitPrice"]),
                "Desc. %": pt_amount(row["DiscountPercent"]), "IVA %": plain(row["VATPercent"]),
                "Total": pt_amount(row["LineTotal"]),
            }
            for label, x, align in COLUMNS:
                _draw_cell(c, values[label], x, align, y)
            for extra in row["wrapped"][1:]:
                y -= WRAP_H
                c.drawString(COLUMNS[1][1], y, extra)
            y -= ROW_H
        if page_number == len(pages) and "Totals" not in omit:
            y -= 14
            for label, amount in [("Total Ilíquido", printed_net), ("Total IVA", vat), ("Total (EUR)", grand)]:
                c.setFont(BOLD if label.startswith("Total (") else FONT, 9)
                c.drawString(400, y, label)
                c.drawRightString(555, y, pt_amount(amount))
                y -= 14
        c.setFont(FONT, 7)
        c.drawString(40, 45, "Processado por programa certificado n.º 1234/AT")
        c.drawCentredString(PAGE_W / 2, 30, f"Página {page_number} de {len(pages)}")
        c.showPage()
    c.save()

    truth = {
        "Header": {"InvoiceNumber": number, "IssueDate": issued.isoformat(), "DueDate": due.isoformat(),
                   "Currency": "EUR"},
        "Supplier": supplier,
        "Customer": customer,
        "Lines": [_line_truth(line) for line in lines],
        "Totals": {"NetTotal": f"{printed_net:.2f}", "VATTotal": f"{vat:.2f}", "GrandTotal": f"{grand:.2f}"},
        "Checks": {"LinesSumMatchesNetTotal": "true" if printed_net == printed_lines_sum else "false"},
        "pages": len(pages),
    }
    for name in ("InvoiceNumber", "IssueDate", "DueDate"):
        if name in omit:
            del truth["Header"][name]
    if "Customer" in omit:
        truth["Customer"] = {}
    if "Totals" in omit:
        truth["Totals"] = {}
        truth["Header"].pop("Currency")
        truth["Checks"] = {"LinesSumMatchesNetTotal": "false"}
    return buffer.getvalue(), truth


def _line_truth(line):
    return {
        "Reference": line["Reference"],
        "Description": line["Description"],
        "Quantity": plain(line["Quantity"]),
        "Unit": line["Unit"],
        "UnitPrice": f"{line['UnitPrice']:.2f}",
        "DiscountPercent": plain(line["DiscountPercent"]),
        "VATPercent": plain(line["VATPercent"]),
        "LineTotal": f"{line['LineTotal']:.2f}",
    }


def _draw_first_page_head(c, supplier, customer, address, number, issued, due, omit, street=SUPPLIER_STREET):
    c.setFont(BOLD, 12)
    c.drawString(40, 800, supplier["Name"])
    # The FATURA block keeps its column unless a long name reaches it: then it moves right, as layouts do.
    right_x = max(380, 40 + stringWidth(supplier["Name"], BOLD, 12) + 24)
    c.setFont(FONT, 9)
    c.drawString(40, 786, street)
    c.drawString(40, 772, f"NIF: {supplier['TaxID']}")
    c.setFont(BOLD, 14)
    c.drawString(right_x, 800, "FATURA")
    c.setFont(FONT, 9)
    right = [("InvoiceNumber", f"N.º {number}"), ("IssueDate", f"Data: {issued:%d-%m-%Y}"),
             ("DueDate", f"Vencimento: {due:%d-%m-%Y}")]
    y = 786
    for name, text in right:
        if name not in omit:
            c.drawString(right_x, y, text)
            y -= 14
    if "Customer" not in omit:
        c.drawString(40, 720, f"Cliente: {customer['Name']}")
        c.drawString(40, 706, f"NIF: {customer['TaxID']}")
        c.drawString(40, 692, f"Morada: {address}")


def make_text_pdf(pages, *, title=None, author=None, font_size=11):
    """Return a PDF with one page per item of pages, each a list of text lines drawn top to bottom."""
    buffer = io.BytesIO()
    c = canvas.Canvas(buffer, pagesize=A4, invariant=1)
    if title:
        c.setTitle(title)
    if author:
        c.setAuthor(author)
    for lines in pages:
        c.setFont(FONT, font_size)
        y = PAGE_H - 60
        for line in lines:
            c.drawString(50, y, line)
            y -= font_size * 1.5
        c.showPage()
    c.save()
    return buffer.getvalue()


def make_encrypted_pdf(password="secret"):
    """Return a one-page PDF that needs a user password to open."""
    buffer = io.BytesIO()
    c = canvas.Canvas(buffer, pagesize=A4, encrypt=password)
    c.drawString(50, 800, "Confidencial")
    c.showPage()
    c.save()
    return buffer.getvalue()


def _raw_pdf(objects):
    """Assemble numbered objects (bytes bodies, object 1 the catalog) into a PDF with a correct xref."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def make_zero_page_pdf():
    """Return a well-formed PDF whose page tree is empty."""
    return _raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])


def make_truncated_pdf(seed=0):
    """Return the first third of an invoice PDF: header and some objects, no xref, no trailer, no page tree."""
    pdf, _ = make_invoice(n_lines=3, seed=seed)
    return pdf[: len(pdf) // 3]


def make_broken_xref_pdf(n_lines=8, seed=0):
    """Return (pdf_bytes, truth) of an invoice whose xref offsets all point nowhere (readers must rebuild it)."""
    pdf, truth = make_invoice(n_lines=n_lines, seed=seed)
    xref = pdf.rindex(b"\nxref\n")
    return pdf[:xref] + re.sub(rb"\d{10} \d{5} n", b"9999999999 00000 n", pdf[xref:]), truth


def make_page_tree_loop_pdf():
    """Return a PDF whose page tree lists itself as its only kid."""
    return _raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>"])


def _zeros_zlib(n_mib):
    """zlib stream of n_mib MiB of zero bytes, built without materialising them: full-flush blocks repeat."""
    chunk = b"\0" * (1 << 20)
    compressor = zlib.compressobj(9)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    size = n_mib << 20
    adler = ((size % 65521) << 16) | 1  # adler32 of zeros: a stays 1, b counts bytes
    return first + block * (n_mib - 1) + b"\x03\x00" + struct.pack(">I", adler)


def make_flate_bomb_pdf(gib=4):
    """Return a one-page PDF whose content stream is [/FlateDecode /FlateDecode] and inflates to gib GiB."""
    data = zlib.compress(_zeros_zlib(gib << 10), 9)
    stream = b"<< /Length %d /Filter [/FlateDecode /FlateDecode] >>\nstream\n" % len(data) + data + b"\nendstream"
    return _raw_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << >> >>",
        stream,
    ])


def make_png_bytes():
    """Return a valid 1x1 PNG (to be uploaded under a .pdf name)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0\xff\xff\xff"))
            + chunk(b"IEND", b""))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a generated pt_simon_invoice_v1 invoice.")
    parser.add_argument("path")
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truth", help="also write the ground truth as JSON here")
    args = parser.parse_args(argv)
    pdf, truth = make_invoice(n_lines=args.lines, seed=args.seed)
    with open(args.path, "wb") as f:
        f.write(pdf)
    if args.truth:
        with open(args.truth, "w", encoding="utf-8") as f:
            json.dump(truth, f, ensure_ascii=False, indent=2)
    print(f"{args.path}: {len(pdf)} bytes, {truth['pages']} pages, {args.lines} lines")


if __name__ == "__main__":
    main()
