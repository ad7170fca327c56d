"""nca_np: denoising autoencoders for singing-voice separation and the
neural couplings algorithm that explains them, in NumPy (or CuPy)."""

__version__ = "0.1.0"
