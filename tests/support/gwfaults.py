"""Faults injected into one document's parse (tests/gateway/test_gw_contract.py).

A parse runs in a child forked from the gateway's zygote (gateway/zygote.py), a process of its own: a monkeypatch
in the test's process never reaches it. Each function here is what the gateway sends the child instead of
zygote.convert (a request names its function, so the child imports this module): it breaks one thing inside the
child, then converts as zygote.convert does. The fault dies with the child."""
from gateway import zygote


def raise_in_pdfium(*args):
    import pypdfium2

    def fail(self, key):
        raise pypdfium2.PdfiumError("Failed to get metadata (injected)")
    pypdfium2.PdfDocument.get_metadata_value = fail
    return zygote.convert(*args)


def raise_in_reading(*args):
    from gateway import pdftext

    def fail(chars, word_gap, cell_gap):
        return [][0]
    pdftext._lines = fail
    return zygote.convert(*args)


def raise_in_rendering(*args):
    from gateway import convert

    def fail(root, pretty=False):
        raise ValueError("cannot serialise (injected)")
    convert.RENDERERS["xml"] = fail
    return zygote.convert(*args)


def the_box_fails_mid_parse(*args):
    from gateway import engine

    def fail(mapping, document):
        raise OSError(24, "Too many open files")
    engine.apply_mapping = fail
    return zygote.convert(*args)


def memory_runs_out_mid_parse(*args):
    from gateway import engine

    def fail(mapping, document):
        raise MemoryError()
    engine.apply_mapping = fail
    return zygote.convert(*args)
