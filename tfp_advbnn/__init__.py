"""tfp_advbnn: Adv-BNN (Liu et al., ICLR 2019) in TensorFlow Probability."""

__version__ = "0.1.0"
