"""Reading pickled numpy arrays without running arbitrary code.

Some data sets (``mnist.pkl.gz``, Deepwriting's npz of object arrays) are pickles. A
pickle can name any callable; this unpickler resolves only what numpy arrays need.
"""

import pickle


class ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays (and the tuples holding them), refusing any other class."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")
        return super().find_class(module, name)
