"""Image code every component uses: `codec` (bytes <-> Pillow, no torch), `tensors` (the networks' tensors
and the operations on them), `sheets` (contact sheets). It imports no other percept package."""
