"""What export raises when a model cannot be exported as asked; the message says why and what to do."""


class ExportError(RuntimeError):
    """A source, an output folder or an export step that cannot be used (data problems stay
    fracdata.data.DataError)."""
