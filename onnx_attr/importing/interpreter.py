"""torch.fx's Interpreter, passing the errors it meets on as they were raised."""

from __future__ import annotations

from torch import fx


class Interpreter(fx.Interpreter):
    """fx.Interpreter rewrites the first argument of any exception raised inside it, appending the
    fx node, "Original traceback: None" and a pointer to tlparse (`extra_traceback`). Our errors
    name the ONNX node already and are shown to users as they are, so the note is left off."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_traceback = False
