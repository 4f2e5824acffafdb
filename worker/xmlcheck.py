"""The gateway's answer checked as it is written: one well-formed XML document, no entities, no external references."""
from xml.parsers import expat

from defusedxml import DefusedXmlException, EntitiesForbidden, ExternalReferenceForbidden

from core import codes
from worker import retry


class WellFormed:
    """A file being written with the gateway's answer that checks, as the chunks pass, that they make one
    well-formed XML document (expat, no tree built, so no second read or parse of the stored file).

    As defusedxml does, entity declarations and external references are refused (a well-formed answer
    of ours has neither). finish() raises the TransientError if the answer was not well-formed."""

    def __init__(self, out):
        self._out = out
        self._parser = expat.ParserCreate()
        self._parser.EntityDeclHandler = self._refuse_entity
        self._parser.UnparsedEntityDeclHandler = self._refuse_entity
        self._parser.ExternalEntityRefHandler = self._refuse_reference
        self._error = None

    @staticmethod
    def _refuse_entity(name, *args):
        raise EntitiesForbidden(name, None, None, None, None, None)

    @staticmethod
    def _refuse_reference(context, base, sysid, pubid):
        raise ExternalReferenceForbidden(context, base, sysid, pubid)

    def write(self, chunk):
        self._out.write(chunk)
        if self._error is None:
            try:
                self._parser.Parse(chunk, False)
            except (expat.ExpatError, DefusedXmlException) as exc:
                self._error = exc

    def finish(self):
        if self._error is None:
            try:
                self._parser.Parse(b"", True)
            except (expat.ExpatError, DefusedXmlException) as exc:
                self._error = exc
        if self._error is not None:
            raise retry.TransientError(codes.GW_5XX, f"the gateway's answer is not well-formed XML ({self._error})")
