"""Code generation: IR programs to Python source (``emit``), the scalar printer
(``printer``), and the helper modules generated kernels import (``runtime``, ``vmath``)."""
